"""RRHF and SLiC-HF ranking terms against naive loops, closed forms and invariants."""

import math
import random

import pytest
import torch

from trl_rankalign.losses import rrhf_loss, slic_hf_loss


def naive_rrhf(logps, lengths, scores, length_penalty):
    p = [lp / max(n, 1) ** length_penalty for lp, n in zip(logps, lengths)]
    return sum(max(0.0, p[i] - p[j]) for i in range(len(p)) for j in range(len(p)) if scores[i] < scores[j])


def naive_slic(logps, scores, margin):
    terms = [
        max(0.0, margin - logps[i] + logps[j])
        for i in range(len(logps))
        for j in range(len(logps))
        if scores[i] > scores[j]
    ]
    return sum(terms) / len(terms) if terms else 0.0


def random_batch(seed, dtype):
    rng = random.Random(seed)
    batch, k_max = 6, rng.randint(2, 6)
    ks = [rng.randint(1, k_max) for _ in range(batch)]
    ks[0] = k_max
    logps = torch.randn(batch, k_max, generator=torch.Generator().manual_seed(seed)) * 20 - 30
    lengths = torch.randint(1, 40, (batch, k_max), generator=torch.Generator().manual_seed(seed + 1))
    scores = torch.tensor([[float(rng.randint(0, 3)) for _ in range(k_max)] for _ in range(batch)])
    mask = torch.tensor([[k < ks[b] for k in range(k_max)] for b in range(batch)])
    return logps.to(dtype), lengths, scores, mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seed", range(8))
def test_against_naive_loops(seed, dtype):
    logps, lengths, scores, mask = random_batch(seed, dtype)
    rrhf, p = rrhf_loss(logps, lengths, scores, mask, length_penalty=0.7)
    slic, lp = slic_hf_loss(logps, scores, mask, margin=2.5)
    for b in range(mask.size(0)):
        k = int(mask[b].sum())
        row_logps = logps[b, :k].float().tolist()
        row_scores, row_lengths = scores[b, :k].tolist(), lengths[b, :k].tolist()
        assert math.isclose(
            rrhf[b].item(), naive_rrhf(row_logps, row_lengths, row_scores, 0.7), rel_tol=1e-5, abs_tol=1e-4
        )
        assert math.isclose(slic[b].item(), naive_slic(row_logps, row_scores, 2.5), rel_tol=1e-5, abs_tol=1e-4)
    assert rrhf.dtype == torch.float32 and not p.requires_grad and not lp.requires_grad
    assert (p[~mask] == 0).all() and (lp[~mask] == 0).all()


def test_rrhf_closed_form():
    """Scores [2, 1, 0]; summed logps [-6, -4, -9] over lengths [3, 1, 3] give p = [-2, -4, -3] (penalty 1).

    Mis-ordered pairs (worse p above better p): (rank 3 over rank 2) -3 > -4 → 1. Others are ordered → 0. L = 1.
    """
    loss, p = rrhf_loss(
        torch.tensor([[-6.0, -4.0, -9.0]]),
        torch.tensor([[3, 1, 3]]),
        torch.tensor([[2.0, 1, 0]]),
        torch.ones(1, 3, dtype=torch.bool),
    )
    assert torch.equal(p, torch.tensor([[-2.0, -4.0, -3.0]])) and loss.item() == 1.0


def test_slic_closed_form():
    """Scores [2, 1, 1] (a tie); logps [-1, -3, -0.5]; margin 1. Ordered pairs: (0,1) max(0, 1-(-1)+(-3)) = 0,
    (0,2) max(0, 1-(-1)+(-0.5)) = 1.5; the tied pair (1,2) is ignored. Mean over 2 pairs = 0.75."""
    loss, _ = slic_hf_loss(
        torch.tensor([[-1.0, -3.0, -0.5]]), torch.tensor([[2.0, 1, 1]]), torch.ones(1, 3, dtype=torch.bool), margin=1.0
    )
    assert loss.item() == 0.75


def test_correct_ranking_gives_zero_and_ties_give_nothing():
    mask = torch.ones(1, 2, dtype=torch.bool)
    correct, lengths, scores = torch.tensor([[-2.0, -5.0]]), torch.tensor([[2, 2]]), torch.tensor([[1.0, 0.0]])
    assert rrhf_loss(correct, lengths, scores, mask)[0].item() == 0.0
    assert slic_hf_loss(correct, scores, mask, margin=0.0)[0].item() == 0.0
    assert rrhf_loss(correct.flip(1), lengths, scores, mask)[0].item() > 0  # reversed policy pays
    tied = torch.tensor([[3.0, 3.0]])
    assert rrhf_loss(correct.flip(1), lengths, tied, mask)[0].item() == 0.0
    assert slic_hf_loss(correct.flip(1), tied, mask)[0].item() == 0.0


def test_padded_slots_get_no_gradient_and_stay_finite():
    logps = torch.tensor([[-3.0, -1.0, -1e4]], requires_grad=True)
    scores = torch.tensor([[1.0, 0.0, 5.0]])  # the padded slot has the best score: it must be ignored
    mask = torch.tensor([[True, True, False]])
    (
        rrhf_loss(logps, torch.tensor([[2, 2, 0]]), scores, mask)[0] + slic_hf_loss(logps, scores, mask)[0]
    ).sum().backward()
    assert torch.isfinite(logps.grad).all() and logps.grad[0, 2] == 0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same \\(B, K\\) shape"):
        slic_hf_loss(torch.zeros(2, 3), torch.zeros(2, 2), torch.ones(2, 3, dtype=torch.bool))
