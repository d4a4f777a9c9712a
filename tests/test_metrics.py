"""Tests for `trl_rankalign.metrics`.

Each vectorised metric is compared row by row, over the valid (mask=True) items of each list, with a reference:
scikit-learn's `ndcg_score(ignore_ties=False)` for NDCG (on the same min-shifted gains), scipy's `kendalltau`
(tau-b) for Kendall's tau and a plain Python loop for pairwise accuracy. Inputs are integers from a small range so
that both rewards and scores have many ties, and masks are padded (prefix) or arbitrary.
"""

import math

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau
from sklearn.metrics import ndcg_score

from trl_rankalign.metrics import kendall_tau, ndcg, pairwise_accuracy


def random_batch(seed: int, B: int, K: int, *, levels: int = 3, prefix_mask: bool = True):
    """Integer rewards and scores in [0, levels) (many ties), variable list lengths, garbage at padded slots."""
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, levels, (B, K), generator=gen).float()
    scores = torch.randint(-levels, levels, (B, K), generator=gen).float()  # negative too: gains are min-shifted
    if prefix_mask:
        lengths = torch.randint(0, K + 1, (B,), generator=gen)
        lengths[0] = K
        mask = torch.arange(K)[None, :] < lengths[:, None]
    else:
        mask = torch.rand(B, K, generator=gen) < 0.7
    rewards = torch.where(mask, rewards, 1e6)  # would win every comparison if padded slots were not ignored
    scores = torch.where(mask, scores, -1e6)
    return rewards, scores, mask


def valid_items(rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, b: int):
    keep = mask[b]
    return rewards[b][keep].double().numpy(), scores[b][keep].double().numpy()


# --------------------------------------------------------------------------------------------------------------
# Naive / library references, one row at a time.
# --------------------------------------------------------------------------------------------------------------


def sklearn_ndcg(r: np.ndarray, s: np.ndarray) -> float:
    """sklearn's tie-averaged NDCG with gains s - min(s); NaN where the ideal DCG is 0 (sklearn says 0)."""
    if len(s) < 2:
        return math.nan
    gains = s - s.min()
    if gains.max() == 0:
        return math.nan
    return float(ndcg_score(gains[None, :], r[None, :], ignore_ties=False))


def scipy_kendall_tau(r: np.ndarray, s: np.ndarray) -> float:
    if len(s) < 2:
        return math.nan
    return float(kendalltau(r, s, variant="b").statistic)  # NaN when either side is constant


def naive_pairwise_accuracy(r: np.ndarray, s: np.ndarray) -> float:
    correct = total = 0
    for i in range(len(s)):
        for j in range(len(s)):
            if s[i] > s[j]:
                total += 1
                correct += r[i] > r[j]
    return correct / total if total else math.nan


REFERENCES = [
    pytest.param(ndcg, sklearn_ndcg, id="ndcg-sklearn"),
    pytest.param(kendall_tau, scipy_kendall_tau, id="kendall_tau-scipy"),
    pytest.param(pairwise_accuracy, naive_pairwise_accuracy, id="pairwise_accuracy-loop"),
]


def assert_rows_match(values: torch.Tensor, expected: list[float]) -> None:
    assert values.shape == (len(expected),) and values.dtype == torch.float32
    for b, (got, want) in enumerate(zip(values.tolist(), expected)):
        if math.isnan(want):
            assert math.isnan(got), f"row {b}: expected NaN, got {got}"
        else:
            assert got == pytest.approx(want, rel=1e-5, abs=1e-6), f"row {b}"


class TestAgainstReferences:
    @pytest.mark.parametrize("prefix_mask", [True, False])
    @pytest.mark.parametrize("levels", [2, 3, 5])
    @pytest.mark.parametrize("seed", [0, 1, 2])
    @pytest.mark.parametrize("metric, reference", REFERENCES)
    def test_random_rows_with_ties(self, metric, reference, seed, levels, prefix_mask):
        rewards, scores, mask = random_batch(seed, 64, 6, levels=levels, prefix_mask=prefix_mask)
        expected = [reference(*valid_items(rewards, scores, mask, b)) for b in range(len(mask))]
        assert sum(not math.isnan(e) for e in expected) > 10  # most rows are defined
        assert_rows_match(metric(rewards, scores, mask), expected)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
    @pytest.mark.parametrize("metric, reference", REFERENCES)
    def test_input_dtypes(self, metric, reference, dtype):
        rewards, scores, mask = random_batch(7, 32, 5, levels=4)
        expected = [reference(*valid_items(rewards, scores, mask, b)) for b in range(len(mask))]
        assert_rows_match(metric(rewards.to(dtype), scores.to(dtype), mask), expected)

    @pytest.mark.parametrize("metric, reference", REFERENCES)
    def test_near_ties_are_not_ties(self, metric, reference):
        """float64 rewards and scores a hair apart (1e-9, below float32's resolution near 0.1): distinct to scipy,
        scikit-learn and the loop, so they must be distinct here (in float32 they merge into ties: tau 0.913 vs
        0.667 on the first row)."""
        base = [0.1, 0.1 + 1e-9, 0.1 + 2e-9, 0.3, 0.3 + 1e-9]
        rewards = torch.tensor([base, base[::-1]], dtype=torch.float64)
        scores = torch.tensor([[0.1 + 2e-9, 0.1, 0.1 + 1e-9, 0.3 + 1e-9, 0.3]] * 2, dtype=torch.float64)
        mask = torch.ones(2, 5, dtype=torch.bool)
        expected = [reference(rewards[b].numpy(), scores[b].numpy()) for b in range(2)]
        assert_rows_match(metric(rewards, scores, mask), expected)
        merged = metric(rewards.float(), scores.float(), mask)  # what float32 inputs can say
        assert not torch.allclose(merged, torch.tensor(expected, dtype=torch.float32), equal_nan=True)

    def test_real_valued_rewards_and_scores(self):
        gen = torch.Generator().manual_seed(3)
        rewards, scores = torch.randn(32, 7, generator=gen), torch.randn(32, 7, generator=gen) * 5
        mask = torch.rand(32, 7, generator=gen) < 0.8
        for metric, reference in ((p.values[0], p.values[1]) for p in REFERENCES):
            expected = [reference(*valid_items(rewards, scores, mask, b)) for b in range(len(mask))]
            assert_rows_match(metric(rewards, scores, mask), expected)


# --------------------------------------------------------------------------------------------------------------
# NDCG regressions and closed forms.
# --------------------------------------------------------------------------------------------------------------


class TestNDCG:
    def test_all_tied_rewards_are_not_a_perfect_ranking(self):
        # Regression: an untrained policy (all implicit rewards 0) on best-first sorted lists used to score 1.0,
        # because reward ties were broken by slot position. Tie-averaged, every item gets the mean discount.
        scores = torch.tensor([[3.0, 2.0, 1.0, 0.0], [10.0, 5.0, -5.0, 0.0]])
        mask = torch.tensor([[True] * 4, [True, True, True, False]])
        values = ndcg(torch.zeros(2, 4), scores, mask)
        assert (values < 1.0).all()
        # Closed form for row 0: gains 3, 2, 1, 0 share the mean discount of positions 1..4.
        discounts = [1 / math.log2(1 + p) for p in range(1, 5)]
        expected_row0 = sum([3, 2, 1, 0]) * sum(discounts) / 4 / sum(g * d for g, d in zip([3, 2, 1, 0], discounts))
        assert values[0].item() == pytest.approx(expected_row0, rel=1e-6)
        assert values[0].item() == pytest.approx(ndcg_score([[3, 2, 1, 0]], [[0, 0, 0, 0]]), rel=1e-6)
        assert values[1].item() == pytest.approx(ndcg_score([[15, 10, 0]], [[0, 0, 0]]), rel=1e-6)

    def test_perfect_and_reversed_order(self):
        scores = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
        mask = torch.ones(1, 4, dtype=torch.bool)
        assert ndcg(torch.tensor([[4.0, 3.0, 2.0, 1.0]]), scores, mask).item() == pytest.approx(1.0)
        reversed_value = ndcg(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), scores, mask).item()
        assert reversed_value < 1.0
        assert reversed_value == pytest.approx(ndcg_score([[3, 2, 1, 0]], [[1, 2, 3, 4]]), rel=1e-6)

    def test_partial_tie(self):
        # Items 0 and 1 tie at the top (positions 1-2), item 2 is last: DCG = (3 + 2) · (1 + 1/log2 3) / 2 + 1 / 2.
        scores, mask = torch.tensor([[3.0, 2.0, 1.0]]), torch.ones(1, 3, dtype=torch.bool)
        value = ndcg(torch.tensor([[5.0, 5.0, 0.0]]), scores + 1.0, mask).item()  # gains 2, 1, 0 after the shift
        d2 = 1 / math.log2(3)
        assert value == pytest.approx((3 * (1 + d2) / 2) / (2 + d2), rel=1e-6)

    def test_padded_slots_are_ignored_wherever_they_are(self):
        rewards = torch.tensor([[0.0, 9.0, 1.0, 9.0, 2.0]])
        scores = torch.tensor([[0.0, 99.0, 1.0, -99.0, 2.0]])
        mask = torch.tensor([[True, False, True, False, True]])
        dense = ndcg(torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[0.0, 1.0, 2.0]]), torch.ones(1, 3, dtype=bool))
        assert ndcg(rewards, scores, mask).item() == pytest.approx(dense.item()) == pytest.approx(1.0)

    def test_shift_invariant_in_the_scores(self):
        rewards, scores, mask = random_batch(5, 16, 5, levels=4)
        torch.testing.assert_close(ndcg(rewards, scores, mask), ndcg(rewards, scores + 100.0, mask), equal_nan=True)

    def test_nan_where_undefined(self):
        rewards = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
        scores = torch.tensor([[2.0, 2.0, 2.0], [5.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
        mask = torch.tensor([[True] * 3, [True, False, False], [False] * 3])
        assert ndcg(rewards, scores, mask).isnan().all()  # constant list, one valid item, fully masked


class TestPairwiseMetrics:
    def test_all_tied_rewards(self):
        scores, mask = torch.tensor([[3.0, 2.0, 1.0]]), torch.ones(1, 3, dtype=torch.bool)
        assert pairwise_accuracy(torch.zeros(1, 3), scores, mask).item() == 0.0  # ties are never correct
        assert kendall_tau(torch.zeros(1, 3), scores, mask).isnan().all()  # tau-b undefined for a constant side

    def test_perfect_and_reversed(self):
        scores, mask = torch.tensor([[3.0, 2.0, 1.0]]), torch.ones(1, 3, dtype=torch.bool)
        perfect, reverse = torch.tensor([[1.0, 0.5, 0.0]]), torch.tensor([[0.0, 0.5, 1.0]])
        assert pairwise_accuracy(perfect, scores, mask).item() == 1.0
        assert pairwise_accuracy(reverse, scores, mask).item() == 0.0
        assert kendall_tau(perfect, scores, mask).item() == pytest.approx(1.0)
        assert kendall_tau(reverse, scores, mask).item() == pytest.approx(-1.0)
