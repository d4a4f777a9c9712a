"""Tests for `trl_rankalign.losses`.

Each vectorised loss is checked against a naive reference written as plain Python loops over lists of floats,
against closed-form cases whose intermediates are round numbers, against TRL's sigmoid DPO loss at K = 2, and
against invariants (permutation, better ranking gives lower loss, finiteness, zero gradient at padded slots).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from trl_rankalign.losses import PL_TIE_MODES, lipo_lambda_loss, plackett_luce_loss, pro_loss


LN = math.log


# --------------------------------------------------------------------------------------------------------------
# Naive references: one row at a time, Python floats, math.log/exp, no vectorisation.
# --------------------------------------------------------------------------------------------------------------


def _valid_in_rank_order(scores: list[float], mask: list[bool]) -> list[int]:
    """Indices of the valid items, best score first, ties by position (what the collator's stable sort gives)."""
    return sorted((k for k in range(len(scores)) if mask[k]), key=lambda k: (-scores[k], k))


def naive_plackett_luce(u: list[float], scores: list[float], mask: list[bool], ties: str) -> float:
    order = _valid_in_rank_order(scores, mask)
    if ties == "ordered":
        loss = 0.0
        for position, k in enumerate(order):
            denominator = sum(math.exp(u[j]) for j in order[position:])
            loss -= u[k] - math.log(denominator)
        return loss
    loss = 0.0
    for level in sorted({scores[k] for k in order}, reverse=True):
        group = [k for k in order if scores[k] == level]
        risk = [k for k in order if scores[k] <= level]
        risk_sum = sum(math.exp(u[j]) for j in risk)
        group_sum = sum(math.exp(u[j]) for j in group)
        m = len(group)
        loss -= sum(u[i] for i in group)
        for within in range(m):
            if ties == "breslow":
                loss += math.log(risk_sum)
            else:  # efron
                loss += math.log(risk_sum - within / m * group_sum)
    return loss


def naive_lipo_lambda(s: list[float], psi: list[float], mask: list[bool]) -> float:
    valid = [k for k in range(len(s)) if mask[k]]
    by_policy = sorted(valid, key=lambda k: (-s[k], k))  # descending s, ties by position
    tau = {k: rank + 1 for rank, k in enumerate(by_policy)}
    loss = 0.0
    for i in valid:
        for j in valid:
            if psi[i] > psi[j]:
                gain_gap = abs((2.0 ** psi[i] - 1.0) - (2.0 ** psi[j] - 1.0))
                discount_gap = abs(1.0 / math.log2(1 + tau[i]) - 1.0 / math.log2(1 + tau[j]))
                loss += gain_gap * discount_gap * math.log1p(math.exp(-(s[i] - s[j])))
    return loss


def naive_pro(s: list[float], r: list[float], mask: list[bool], mode: str, temperature: float) -> float:
    order = _valid_in_rank_order(r, mask)
    loss = 0.0
    for position, k in enumerate(order[:-1]):
        rest = order[position + 1 :]
        if mode == "reward_difference":
            weights = [(r[k] - r[i]) / temperature for i in rest]
        else:
            weights = [0.0 if r[i] == r[k] else 1.0 / temperature for i in rest]
        top = max(weights)
        denominator = math.exp(top * s[k]) + sum(math.exp(w * s[i]) for w, i in zip(weights, rest))
        loss += math.log(denominator) - top * s[k]
    return loss


# --------------------------------------------------------------------------------------------------------------
# Random batches shaped like the collator's output.
# --------------------------------------------------------------------------------------------------------------


def random_batch(seed: int, B: int, K: int, *, num_levels: int = 3, prefix_mask: bool = True):
    """Sorted (descending, stable) integer scores with ties, variable list length, garbage in padded slots."""
    gen = torch.Generator().manual_seed(seed)
    policy = torch.randn(B, K, generator=gen) * 3.0 - 20.0
    ref = torch.randn(B, K, generator=gen) * 3.0 - 20.0
    mean_logps = torch.randn(B, K, generator=gen) - 2.0
    scores = torch.randint(0, num_levels, (B, K), generator=gen).float().sort(dim=1, descending=True).values
    if prefix_mask:
        lengths = torch.randint(1, K + 1, (B,), generator=gen)
        lengths[0] = K  # at least one full row
        mask = torch.arange(K)[None, :] < lengths[:, None]
    else:
        mask = torch.rand(B, K, generator=gen) < 0.7
    # The collator pads with arbitrary values; the losses must ignore them.
    policy = torch.where(mask, policy, 123.0)
    ref = torch.where(mask, ref, -456.0)
    mean_logps = torch.where(mask, mean_logps, 789.0)
    scores = torch.where(mask, scores, 0.0)
    return policy, ref, mean_logps, scores, mask


def _rows(*tensors):
    """Per-row Python lists of floats (bfloat16 inputs are first read back exactly as float32)."""
    lists = [t.float().tolist() if t.dtype != torch.bool else t.tolist() for t in tensors]
    return list(zip(*lists))


DTYPES = [torch.float32, torch.bfloat16]
TOL = {"rtol": 1e-4, "atol": 1e-4}


# --------------------------------------------------------------------------------------------------------------
# Against the naive references.
# --------------------------------------------------------------------------------------------------------------


class TestAgainstNaiveReference:
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("ties", PL_TIE_MODES)
    @pytest.mark.parametrize("prefix_mask", [True, False])
    def test_plackett_luce(self, ties, dtype, prefix_mask):
        beta = 0.5
        for K in range(2, 9):
            policy, ref, _, scores, mask = random_batch(K, 12, K, prefix_mask=prefix_mask)
            policy, ref = policy.to(dtype), ref.to(dtype)
            losses, rewards = plackett_luce_loss(policy, ref, scores, mask, beta=beta, ties=ties)
            assert losses.dtype == torch.float32 and losses.shape == (12,)
            expected, expected_rewards = [], []
            for p, r, sc, m in _rows(policy, ref, scores, mask):
                u = [beta * (pk - rk) for pk, rk in zip(p, r)]
                expected.append(naive_plackett_luce(u, sc, m, ties))
                expected_rewards.append([uk if mk else 0.0 for uk, mk in zip(u, m)])
            torch.testing.assert_close(losses, torch.tensor(expected), **TOL)
            torch.testing.assert_close(rewards, torch.tensor(expected_rewards), **TOL)

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("prefix_mask", [True, False])
    def test_lipo_lambda(self, dtype, prefix_mask):
        beta = 0.5
        for K in range(2, 9):
            policy, ref, _, scores, mask = random_batch(100 + K, 12, K, num_levels=4, prefix_mask=prefix_mask)
            policy, ref = policy.to(dtype), ref.to(dtype)
            losses, rewards = lipo_lambda_loss(policy, ref, scores, mask, beta=beta)
            expected = []
            for p, r, sc, m in _rows(policy, ref, scores, mask):
                s = [beta * (pk - rk) for pk, rk in zip(p, r)]
                expected.append(naive_lipo_lambda(s, sc, m))
            torch.testing.assert_close(losses, torch.tensor(expected), **TOL)
            assert torch.all(rewards[~mask] == 0)

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize(
        ("mode", "temperature"),
        [("reward_difference", 1.0), ("reward_difference", 0.7), ("constant", 1.0), ("constant", 0.5)],
    )
    @pytest.mark.parametrize("prefix_mask", [True, False])
    def test_pro(self, mode, temperature, dtype, prefix_mask):
        for K in range(2, 9):
            _, _, mean_logps, scores, mask = random_batch(200 + K, 12, K, num_levels=4, prefix_mask=prefix_mask)
            mean_logps = mean_logps.to(dtype)
            losses, rewards = pro_loss(mean_logps, scores, mask, temperature_mode=mode, temperature=temperature)
            expected, expected_rewards = [], []
            for s, sc, m in _rows(mean_logps, scores, mask):
                expected.append(naive_pro(s, sc, m, mode, temperature))
                expected_rewards.append([sk if mk else 0.0 for sk, mk in zip(s, m)])
            torch.testing.assert_close(losses, torch.tensor(expected), **TOL)
            torch.testing.assert_close(rewards, torch.tensor(expected_rewards), **TOL)

    def test_lipo_ranks_follow_current_policy_with_ties_broken_by_position(self):
        # Policy equal to the reference: s = 0 everywhere, so τ is the position order 1, 2, 3.
        policy = torch.zeros(1, 3)
        scores = torch.tensor([[2.0, 1.0, 0.0]])
        mask = torch.ones(1, 3, dtype=torch.bool)
        losses, _ = lipo_lambda_loss(policy, policy, scores, mask, beta=1.0)
        expected = naive_lipo_lambda([0.0, 0.0, 0.0], [2.0, 1.0, 0.0], [True] * 3)
        torch.testing.assert_close(losses, torch.tensor([expected]))


# --------------------------------------------------------------------------------------------------------------
# K = 2: every listwise loss reduces to the pairwise one.
# --------------------------------------------------------------------------------------------------------------


class TestPairwiseReduction:
    @pytest.mark.parametrize("ties", PL_TIE_MODES)
    @pytest.mark.parametrize("beta", [0.1, 1.0])
    def test_plackett_luce_k2_is_trl_sigmoid_dpo(self, ties, beta):
        gen = torch.Generator().manual_seed(0)
        chosen_logps, rejected_logps = torch.randn(16, generator=gen) - 30, torch.randn(16, generator=gen) - 30
        ref_chosen_logps, ref_rejected_logps = torch.randn(16, generator=gen) - 30, torch.randn(16, generator=gen) - 30

        # TRL 1.16 DPOTrainer, loss_type="sigmoid", label_smoothing=0, f_divergence_type="reverse_kl".
        delta_score = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
        label_smoothing = 0.0
        trl_loss = -(1 - label_smoothing) * F.logsigmoid(beta * delta_score) - label_smoothing * F.logsigmoid(
            -beta * delta_score
        )

        policy = torch.stack([chosen_logps, rejected_logps], dim=1)  # (B, 2) chosen first, as the collator sorts
        ref = torch.stack([ref_chosen_logps, ref_rejected_logps], dim=1)
        scores = torch.tensor([[1.0, 0.0]]).expand(16, 2)
        mask = torch.ones(16, 2, dtype=torch.bool)
        losses, rewards = plackett_luce_loss(policy, ref, scores, mask, beta=beta, ties=ties)
        torch.testing.assert_close(losses, trl_loss)
        torch.testing.assert_close(rewards[:, 0], beta * (chosen_logps - ref_chosen_logps))
        torch.testing.assert_close(rewards[:, 1], beta * (rejected_logps - ref_rejected_logps))

    @pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
    def test_pro_constant_k2_is_logsigmoid(self, temperature):
        gen = torch.Generator().manual_seed(1)
        s = torch.randn(16, 2, generator=gen) - 2.0
        scores = torch.tensor([[5.0, 2.0]]).expand(16, 2)
        mask = torch.ones(16, 2, dtype=torch.bool)
        losses, _ = pro_loss(s, scores, mask, temperature_mode="constant", temperature=temperature)
        torch.testing.assert_close(losses, -F.logsigmoid((s[:, 0] - s[:, 1]) / temperature))


# --------------------------------------------------------------------------------------------------------------
# Closed forms: inputs chosen so that every intermediate is a round number.
# --------------------------------------------------------------------------------------------------------------


class TestClosedForm:
    def test_plackett_luce(self):
        """
        β = 0.5 and policy − ref = 2·ln([3, 1, 2]), so u = ln([3, 1, 2]) and e^u = [3, 1, 2] (Σ = 6).

        Distinct scores [2, 1, 0] (all tie modes are plain Plackett-Luce):
            P = 3/(3+1+2) · 1/(1+2) · 2/2 = 1/2 · 1/3 · 1 = 1/6           → loss = ln 6
        Scores [1, 1, 0] (items 0 and 1 tied, group sum Σ_G = 4, risk set sum Σ_R = 6):
            ordered: same as above, ties kept in position order            → loss = ln 6
            breslow: ln 3 + ln 1 − 2·ln 6 = ln(3/36) = −ln 12              → loss = ln 12
            efron:   ln 3 + ln 1 − ln 6 − ln(6 − ½·4) = ln(3/24) = −ln 8  → loss = ln 8
        The last group {2} contributes ln 2 − ln 2 = 0 in every mode.
        """
        ref = torch.full((2, 3), -7.0)
        policy = ref + 2.0 * torch.log(torch.tensor([3.0, 1.0, 2.0]))
        scores = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
        mask = torch.ones(2, 3, dtype=torch.bool)
        expected = {"ordered": [LN(6), LN(6)], "breslow": [LN(6), LN(12)], "efron": [LN(6), LN(8)]}
        for ties, values in expected.items():
            losses, rewards = plackett_luce_loss(policy, ref, scores, mask, beta=0.5, ties=ties)
            torch.testing.assert_close(losses, torch.tensor(values))
            torch.testing.assert_close(rewards, torch.log(torch.tensor([[3.0, 1.0, 2.0]] * 2)))

    def test_lipo_lambda(self):
        """
        One pair, ψ = [2, 0] (a third, padded slot is ignored): G = 2^ψ − 1 = [3, 0].
        β = 1 and policy − ref = [ln 3, 0] (row 0) or [0, ln 3] (row 1).
        Row 0: s_1 > s_2, τ = [1, 2]; row 1: reversed, τ = [2, 1]. Either way
            Δ = |3 − 0| · |1/log2(2) − 1/log2(3)| = 3 · (1 − ln 2 / ln 3).
        Row 0: loss = Δ · ln(1 + e^{−ln 3}) = Δ · ln(4/3)
        Row 1: loss = Δ · ln(1 + e^{+ln 3}) = Δ · ln 4
        """
        ref = torch.full((2, 3), -5.0)
        policy = ref + torch.tensor([[LN(3), 0.0, 50.0], [0.0, LN(3), 50.0]])
        scores = torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
        mask = torch.tensor([[True, True, False], [True, True, False]])
        delta = 3.0 * (1.0 - LN(2) / LN(3))
        losses, rewards = lipo_lambda_loss(policy, ref, scores, mask, beta=1.0)
        torch.testing.assert_close(losses, torch.tensor([delta * LN(4 / 3), delta * LN(4)]))
        torch.testing.assert_close(rewards, torch.tensor([[LN(3), 0.0, 0.0], [0.0, LN(3), 0.0]]))

    def test_pro(self):
        """
        r = [3, 2, 0], s = [0, −ln 2, −ln 2].

        reward_difference:
            stage 1: w = [r1−r2, r1−r3] = [1, 3], w_11 = 3
                     ℓ_1 = ln(e^{3·0} + e^{−ln 2} + e^{−3 ln 2}) − 0 = ln(1 + 1/2 + 1/8) = ln(13/8)
            stage 2: w = [2], w_22 = 2
                     ℓ_2 = ln(e^{−2 ln 2} + e^{−2 ln 2}) + 2 ln 2 = ln(1/2) + ln 4 = ln 2
            loss = ln(13/8) + ln 2 = ln(13/4)
        constant, T = 1 (every weight 1):
            ℓ_1 = ln(1 + 1/2 + 1/2) = ln 2;  ℓ_2 = ln(1/2 + 1/2) + ln 2 = ln 2;  loss = ln 4
        constant, T = 1/2 (every weight 2):
            ℓ_1 = ln(1 + 1/4 + 1/4) = ln(3/2);  ℓ_2 = ln(1/4 + 1/4) + 2 ln 2 = ln 2;  loss = ln 3
        reward_difference with a tie, r = [1, 1, 0], s = [0, 0, −ln 2]:
            stage 1: w = [0, 1], w_11 = 1: ℓ_1 = ln(e^0 + e^{0·0} + e^{−ln 2}) − 0 = ln(5/2)
            stage 2: w = [1], w_22 = 1:    ℓ_2 = ln(e^0 + e^{−ln 2}) − 0 = ln(3/2)
            loss = ln(15/4)
        """
        s = torch.tensor([[0.0, -LN(2), -LN(2)]])
        r = torch.tensor([[3.0, 2.0, 0.0]])
        mask = torch.ones(1, 3, dtype=torch.bool)
        torch.testing.assert_close(pro_loss(s, r, mask)[0], torch.tensor([LN(13 / 4)]))
        torch.testing.assert_close(pro_loss(s, r, mask, "constant", 1.0)[0], torch.tensor([LN(4)]))
        torch.testing.assert_close(pro_loss(s, r, mask, "constant", 0.5)[0], torch.tensor([LN(3)]))
        losses, rewards = pro_loss(torch.tensor([[0.0, 0.0, -LN(2)]]), torch.tensor([[1.0, 1.0, 0.0]]), mask)
        torch.testing.assert_close(losses, torch.tensor([LN(15 / 4)]))
        torch.testing.assert_close(rewards, torch.tensor([[0.0, 0.0, -LN(2)]]))


# --------------------------------------------------------------------------------------------------------------
# Invariants.
# --------------------------------------------------------------------------------------------------------------

ALL_LOSSES = [
    pytest.param(lambda p, r, m, s, k, beta, t=t: plackett_luce_loss(p, r, s, k, beta, ties=t), id=f"pl-{t}")
    for t in PL_TIE_MODES
] + [
    pytest.param(lambda p, r, m, s, k, beta: lipo_lambda_loss(p, r, s, k, beta), id="lipo"),
    pytest.param(lambda p, r, m, s, k, beta: pro_loss(m, s, k, "reward_difference"), id="pro-reward_difference"),
    pytest.param(lambda p, r, m, s, k, beta: pro_loss(m, s, k, "constant", 0.5), id="pro-constant"),
]


def _permute_and_resort(tensors, scores, mask, seed):
    """Shuffle each row's valid prefix, then re-sort it stably by descending score, as the collator would."""
    gen = torch.Generator().manual_seed(seed)
    out = [t.clone() for t in tensors]
    new_scores = scores.clone()
    for b in range(scores.shape[0]):
        n = int(mask[b].sum())
        perm = torch.randperm(n, generator=gen)
        order = perm[torch.sort(scores[b, perm], descending=True, stable=True).indices]
        new_scores[b, :n] = scores[b, order]
        for t_out, t_in in zip(out, tensors):
            t_out[b, :n] = t_in[b, order]
    return out, new_scores


class TestInvariants:
    @pytest.mark.parametrize("loss_fn", ALL_LOSSES)
    def test_permutation_invariance_without_ties(self, loss_fn):
        """With distinct scores, re-sorting a shuffled row restores it exactly, so instead shuffle whole rows
        (padding and mask included) and skip the sort: the losses read ranks from the scores, not positions."""
        policy, ref, mean_logps, _, mask = random_batch(7, 16, 6)
        scores = torch.where(mask, torch.randn(16, 6).sort(dim=1, descending=True).values, 0.0)  # distinct scores
        gen = torch.Generator().manual_seed(8)
        perm = torch.stack([torch.randperm(6, generator=gen) for _ in range(16)])  # (B, K)
        shuffled = [t.gather(1, perm) for t in (policy, ref, mean_logps, scores, mask)]
        torch.testing.assert_close(
            loss_fn(*shuffled, 0.5)[0], loss_fn(policy, ref, mean_logps, scores, mask, 0.5)[0], rtol=1e-5, atol=1e-5
        )

    @pytest.mark.parametrize("ties", ["efron", "breslow"])
    def test_tie_symmetric_modes_are_invariant_to_permuting_tied_items(self, ties):
        policy, ref, _, scores, mask = random_batch(9, 16, 8, num_levels=2)  # many ties
        (p2, r2), s2 = _permute_and_resort([policy, ref], scores, mask, seed=10)
        assert torch.equal(s2, scores)  # scores re-sort to the same list: only tied items moved
        assert not torch.equal(p2, policy)
        torch.testing.assert_close(
            plackett_luce_loss(p2, r2, s2, mask, 0.5, ties)[0],
            plackett_luce_loss(policy, ref, scores, mask, 0.5, ties)[0],
        )
        # LiPO-λ never orders ties either.
        torch.testing.assert_close(
            lipo_lambda_loss(p2, r2, s2, mask, 0.5)[0], lipo_lambda_loss(policy, ref, scores, mask, 0.5)[0]
        )

    def test_ordered_mode_depends_on_the_order_of_tied_items(self):
        """Scores [1, 1], e^u = [2, 1]: ordered gives −ln(2/3) or −ln(1/3); efron/breslow cannot tell them apart."""
        u = torch.log(torch.tensor([[2.0, 1.0], [1.0, 2.0]]))
        scores = torch.ones(2, 2)
        mask = torch.ones(2, 2, dtype=torch.bool)
        ordered, _ = plackett_luce_loss(u, torch.zeros_like(u), scores, mask, beta=1.0, ties="ordered")
        torch.testing.assert_close(ordered, torch.tensor([-LN(2 / 3), -LN(1 / 3)]))
        for ties in ("efron", "breslow"):
            losses, _ = plackett_luce_loss(u, torch.zeros_like(u), scores, mask, beta=1.0, ties=ties)
            torch.testing.assert_close(losses[0], losses[1])

    @pytest.mark.parametrize("loss_fn", ALL_LOSSES)
    def test_policy_that_follows_the_ranking_has_lower_loss(self, loss_fn):
        scores = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
        mask = torch.ones(1, 4, dtype=torch.bool)
        ref = torch.full((1, 4), -40.0)
        margins = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
        good = loss_fn(ref + margins, ref, -2.0 + 0.5 * margins, scores, mask, 1.0)[0]
        bad = loss_fn(ref + margins.flip(1), ref, -2.0 + 0.5 * margins.flip(1), scores, mask, 1.0)[0]
        assert good.item() < bad.item()

    @pytest.mark.parametrize("loss_fn", ALL_LOSSES)
    def test_rewards_are_detached(self, loss_fn):
        policy, ref, mean_logps, scores, mask = random_batch(11, 4, 5)
        policy.requires_grad_(True)
        mean_logps.requires_grad_(True)
        losses, rewards = loss_fn(policy, ref, mean_logps, scores, mask, 0.5)
        assert losses.requires_grad
        assert not rewards.requires_grad
        assert rewards.shape == (4, 5)
        assert torch.all(rewards[~mask] == 0)

    @pytest.mark.parametrize("beta", [1e-3, 10.0])
    @pytest.mark.parametrize("loss_fn", ALL_LOSSES)
    def test_finite_loss_and_grads_on_degenerate_rows(self, loss_fn, beta):
        nan, inf = float("nan"), float("inf")
        # Row 0: full list of log-probs ≈ −1e4.   Row 1: fully tied list.   Row 2: one valid item.
        # Row 3: fully masked.   Row 4: padding holding NaN/inf.   Row 5: huge implicit-reward gaps (|u| ≈ 1e5).
        # Row 6: padded slots whose score ties with two valid items (Efron's within-group index reaches m there).
        policy = torch.tensor(
            [
                [-1e4 - 1.0, -1e4 + 2.0, -1e4 - 3.0, -1e4],
                [-1e4, -1e4 + 5.0, -1e4 - 5.0, -1e4],
                [-1e4, 0.0, 0.0, 0.0],
                [-1e4, -1e4, -1e4, -1e4],
                [-1e4 + 1.0, -1e4, nan, inf],
                [-1e4, -1.0, -1e4, -5.0],
                [-3.0, -1.0, -2.0, -2.0],
            ]
        )
        ref = torch.tensor(
            [
                [-1e4, -1e4 + 1.0, -1e4 + 0.5, -1e4 - 2.0],
                [-1e4 + 1.0, -1e4, -1e4, -1e4 + 3.0],
                [-1e4 + 1.0, 0.0, 0.0, 0.0],
                [-1e4, -1e4, -1e4, -1e4],
                [-1e4, -1e4, -inf, nan],
                [-1.0, -1e4, -1.0, -1e4],
                [-2.0, -2.0, -2.0, -2.0],
            ]
        )
        mean_logps = torch.tensor(
            [
                [-1e4, -1e4 + 1.0, -3.0, -1e4],
                [-1.0, -2.0, -3.0, -4.0],
                [-2.0, 0.0, 0.0, 0.0],
                [-1.0, -1.0, -1.0, -1.0],
                [-1.0, -2.0, nan, -inf],
                [-1e4, -1.0, -1e4, -5.0],
                [-1.0, -2.0, -3.0, -3.0],
            ]
        )
        scores = torch.tensor(
            [
                [4.0, 3.0, 2.0, 1.0],
                [2.0, 2.0, 2.0, 2.0],
                [1.0, 0.0, 0.0, 0.0],
                [0.0, 0.0, 0.0, 0.0],
                [1.0, 0.0, nan, 9e9],
                [3.0, 2.0, 1.0, 0.0],
                [0.0, 0.0, 0.0, 0.0],
            ]
        )
        mask = torch.tensor(
            [
                [True] * 4,
                [True] * 4,
                [True, False, False, False],
                [False] * 4,
                [True, True, False, False],
                [True] * 4,
                [True, True, False, False],
            ]
        )
        policy.requires_grad_(True)
        mean_logps.requires_grad_(True)
        losses, rewards = loss_fn(policy, ref, mean_logps, scores, mask, beta)
        assert torch.isfinite(losses).all(), losses
        assert torch.isfinite(rewards).all()
        assert losses[2].item() == 0.0 and losses[3].item() == 0.0  # fewer than two valid items
        losses.sum().backward()
        for grad in (policy.grad, mean_logps.grad):
            if grad is not None:
                assert torch.isfinite(grad).all(), grad
                assert torch.all(grad[~mask] == 0)  # exactly zero at padded slots
        used = policy.grad if policy.grad is not None else mean_logps.grad
        assert used is not None and used[0].abs().sum() > 0

    @pytest.mark.parametrize("loss_fn", ALL_LOSSES)
    def test_gradient_is_exactly_zero_at_padded_slots(self, loss_fn):
        policy, ref, mean_logps, scores, mask = random_batch(12, 8, 6)
        assert (~mask).any()
        policy.requires_grad_(True)
        mean_logps.requires_grad_(True)
        losses, _ = loss_fn(policy, ref, mean_logps, scores, mask, 0.5)
        losses.sum().backward()
        grad = policy.grad if policy.grad is not None else mean_logps.grad
        assert torch.all(grad[~mask] == 0)
        assert grad[mask].abs().sum() > 0


# --------------------------------------------------------------------------------------------------------------
# Argument validation.
# --------------------------------------------------------------------------------------------------------------


class TestBadArguments:
    def setup_method(self):
        self.logps = torch.zeros(2, 3)
        self.scores = torch.tensor([[2.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
        self.mask = torch.ones(2, 3, dtype=torch.bool)

    def test_unknown_tie_mode(self):
        with pytest.raises(ValueError, match="ties"):
            plackett_luce_loss(self.logps, self.logps, self.scores, self.mask, beta=0.1, ties="random")

    def test_unknown_temperature_mode(self):
        with pytest.raises(ValueError, match="temperature_mode"):
            pro_loss(self.logps, self.scores, self.mask, temperature_mode="linear")

    @pytest.mark.parametrize("value", [0.0, -1.0, float("nan")])
    def test_non_positive_beta_and_temperature(self, value):
        with pytest.raises(ValueError, match="beta"):
            plackett_luce_loss(self.logps, self.logps, self.scores, self.mask, beta=value)
        with pytest.raises(ValueError, match="beta"):
            lipo_lambda_loss(self.logps, self.logps, self.scores, self.mask, beta=value)
        with pytest.raises(ValueError, match="temperature"):
            pro_loss(self.logps, self.scores, self.mask, temperature=value)

    def test_shape_mismatch(self):
        short = torch.zeros(2, 2)
        with pytest.raises(ValueError, match="ref_logps"):
            plackett_luce_loss(self.logps, short, self.scores, self.mask, beta=0.1)
        with pytest.raises(ValueError, match="scores"):
            lipo_lambda_loss(self.logps, self.logps, short, self.mask, beta=0.1)
        with pytest.raises(ValueError, match="policy_mean_logps"):
            pro_loss(short, self.scores, self.mask)
        with pytest.raises(ValueError, match="mask"):
            pro_loss(self.logps.flatten(), self.scores.flatten(), self.mask.flatten())

    def test_lipo_rejects_scores_that_overflow_the_gain(self):
        scores = torch.tensor([[100.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
        with pytest.raises(ValueError, match="Rescale"):
            lipo_lambda_loss(self.logps, self.logps, scores, self.mask, beta=0.1)
        # A large score in a padded slot is ignored.
        mask = torch.tensor([[False, True, True], [True, True, True]])
        lipo_lambda_loss(self.logps, self.logps, scores, mask, beta=0.1)

    def test_pro_rejects_reward_gaps_that_overflow_the_gradients(self):
        mean_logps = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -2.0, -3.0]], requires_grad=True)
        mask = torch.ones(2, 3, dtype=torch.bool)
        huge = torch.tensor([[2.0, 1.0, 0.0], [1e20, 0.0, -5.0]])
        with pytest.raises(ValueError, match=r"batch row 1 has a largest gap of 1e\+20.*Rescale.*'constant'"):
            pro_loss(mean_logps, huge, mask)
        # The bound is on the weight gap / temperature, 1e4: a larger temperature brings the same gap inside it.
        gap_2e4 = torch.tensor([[2e4, 0.0, 0.0], [1.0, 0.0, 0.0]])
        with pytest.raises(ValueError, match="batch row 0 has a largest gap of 20000"):
            pro_loss(mean_logps, gap_2e4, mask)
        pro_loss(mean_logps, gap_2e4, mask, temperature=2.0)
        # Non-finite scores in a valid slot are refused too (the gap is inf or NaN).
        for bad in (float("inf"), float("nan")):
            with pytest.raises(ValueError, match="batch row 0"):
                pro_loss(mean_logps, torch.tensor([[bad, 0.0, 0.0], [1.0, 0.0, 0.0]]), mask)

    def test_pro_moderate_gaps_padding_and_constant_mode_are_unaffected(self):
        mean_logps = torch.tensor([[-1.0, -2.0, -3.0], [-1e4, -2.0, -3.0]], requires_grad=True)
        mask = torch.tensor([[True, True, False], [True, True, True]])
        # Largest allowed gap (1e4) with log-probs down to -1e4: finite loss and gradients.
        scores = torch.tensor([[1e4, 0.0, 1e20], [5e3, -5e3, 0.0]])  # 1e20 sits in a padded slot: ignored
        losses, _ = pro_loss(mean_logps, scores, mask)
        losses.sum().backward()
        assert torch.isfinite(losses).all() and torch.isfinite(mean_logps.grad).all()
        # The constant mode never multiplies by the gap, so no bound applies there.
        huge = torch.tensor([[1e20, 0.0, 0.0], [1e30, 1.0, -1e30]])
        losses, _ = pro_loss(mean_logps, huge, torch.ones(2, 3, dtype=torch.bool), temperature_mode="constant")
        assert torch.isfinite(losses).all()
