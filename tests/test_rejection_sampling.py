# Copyright 2025 The trl-rankalign authors. Licensed under the Apache License, Version 2.0.
"""Tests for `trl_rankalign.rejection_sampling` (RSO, Liu et al. 2023, arXiv:2309.06657)."""

import math
import random

import pytest
import torch

from trl_rankalign.rejection_sampling import (
    batched_statistical_rejection_sampling,
    first_round_pairs,
    statistical_rejection_sampling,
    tournament_pairs,
)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tv(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


def _optimal_policy(pi_sft: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """π_r ∝ π_sft · exp(r / β), the paper's Eq. (4), on a finite support."""
    weights = pi_sft * torch.exp(rewards / beta)
    return weights / weights.sum()


def _naive_algorithm_1(rewards: list[float], num_samples: int, beta: float, rng: random.Random) -> list[int]:
    """Plain-Python transcription of the paper's Algorithm 1, keyed by index instead of by text.

    Visits candidates in index (generation) order and stops at `num_samples`, exactly as printed in the paper.
    """
    candidates = dict(enumerate(rewards))
    accepted: list[int] = []
    while len(accepted) < num_samples:
        max_reward = max(candidates.values())
        to_remove = []
        for c, r in candidates.items():
            u = rng.random()
            if u >= math.exp((r - max_reward) / beta):
                continue
            accepted.append(c)
            to_remove.append(c)
            if len(accepted) == num_samples:
                break
        for c in to_remove:
            candidates.pop(c)
    return accepted


# ----------------------------------------------------------------------------------------------------------------
# Distribution
# ----------------------------------------------------------------------------------------------------------------


def test_one_of_n_matches_optimal_policy():
    """1-of-64 from a 6-output toy with β = 0.5 follows π_r ∝ π_sft·exp(r/β) (total variation ≤ 0.02).

    π_sft is non-uniform and not monotone in the reward. The top-reward output has π_sft = 0.15, so it is missing
    from 64 candidates with probability 0.85^64 ≈ 3e-5: the only source of bias of Algorithm 1 in the 1-of-N
    case (see the docstring of `statistical_rejection_sampling`). With 20000 trials, Monte-Carlo noise in the TV
    distance is about 0.006. The β-ignoring target π_sft·exp(r) is ≈ 0.24 away from π_r, far beyond the tolerance,
    so an implementation that drops β fails.
    """
    pi_sft = torch.tensor([0.30, 0.05, 0.20, 0.10, 0.20, 0.15], dtype=torch.float64)
    reward_of = torch.tensor([-0.5, 1.2, 0.0, 0.4, 0.8, 1.5], dtype=torch.float64)
    beta, trials, num_candidates = 0.5, 20000, 64
    generator = _seeded(0)

    outputs = torch.multinomial(pi_sft, trials * num_candidates, replacement=True, generator=generator)
    outputs = outputs.view(trials, num_candidates)  # (T, N): which toy output each candidate is
    accepted = batched_statistical_rejection_sampling(reward_of[outputs], 1, beta, generator=generator)
    assert all(len(row) == 1 for row in accepted)
    picked = outputs[torch.arange(trials), torch.tensor([row[0] for row in accepted])]  # (T,)
    empirical = torch.bincount(picked, minlength=6).double() / trials

    target = _optimal_policy(pi_sft, reward_of, beta)
    beta_ignored = _optimal_policy(pi_sft, reward_of, 1.0)
    assert _tv(target, beta_ignored) > 0.2
    assert _tv(empirical, target) <= 0.02
    assert _tv(empirical, beta_ignored) > 0.15
    assert _tv(empirical, pi_sft) > 0.3


def test_one_of_n_single_prompt_function_matches_optimal_policy():
    """The single-prompt entry point, called in a loop (fewer trials, looser tolerance), also follows π_r."""
    pi_sft = torch.tensor([0.30, 0.05, 0.20, 0.10, 0.20, 0.15], dtype=torch.float64)
    reward_of = torch.tensor([-0.5, 1.2, 0.0, 0.4, 0.8, 1.5], dtype=torch.float64)
    beta, trials = 0.5, 3000
    generator = _seeded(1)
    outputs = torch.multinomial(pi_sft, trials * 64, replacement=True, generator=generator).view(trials, 64)
    counts = torch.zeros(6, dtype=torch.float64)
    for row in outputs:
        (index,) = statistical_rejection_sampling(reward_of[row], 1, beta, generator=generator)
        counts[row[index]] += 1
    assert _tv(counts / trials, _optimal_policy(pi_sft, reward_of, beta)) <= 0.04


def test_k_of_n_marginal_matches_naive_algorithm_1():
    """8-of-64 marginal against a naive plain-Python simulation of the paper's Algorithm 1 (TV ≤ 0.02).

    Target: for k > 1 the marginal of the accepted outputs is not π_r (later rounds lower r_max and sample without
    replacement), and we do not derive it in closed form. The reference is a Monte-Carlo estimate from
    `_naive_algorithm_1`, a literal transcription of Algorithm 1 with Python's `random`, visiting candidates in
    index order; since the candidates are i.i.d., that order is exchangeable and gives the same output
    distribution as our random visiting order. Both estimates use 20000 trials × 8 accepted (noise ≈ 0.003 TV).
    Here the top output has π_sft = 0.05 (≈ 3 copies among 64 for 8 picks), so the marginal is visibly flatter than
    π_r (TV ≈ 0.08), which the test also checks, so a sampler that simply returned π_r draws would fail.
    """
    pi_sft = torch.tensor([0.30, 0.25, 0.20, 0.12, 0.08, 0.05], dtype=torch.float64)
    reward_of = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 2.5], dtype=torch.float64)
    beta, trials, num_candidates, k = 0.5, 20000, 64, 8
    generator = _seeded(2)

    outputs = torch.multinomial(pi_sft, trials * num_candidates, replacement=True, generator=generator)
    outputs = outputs.view(trials, num_candidates)  # (T, N)
    accepted = batched_statistical_rejection_sampling(reward_of[outputs], k, beta, generator=generator)
    accepted = torch.tensor(accepted)  # (T, k)
    assert accepted.shape == (trials, k)
    assert all(len(set(row)) == k for row in accepted.tolist())
    picked = outputs.gather(1, accepted)  # (T, k)
    empirical = torch.bincount(picked.flatten(), minlength=6).double() / picked.numel()

    rng = random.Random(3)
    rewards_list, weights = reward_of.tolist(), pi_sft.tolist()
    reference_counts = [0] * 6
    for _ in range(trials):
        ys = rng.choices(range(6), weights=weights, k=num_candidates)
        for c in _naive_algorithm_1([rewards_list[y] for y in ys], k, beta, rng):
            reference_counts[ys[c]] += 1
    reference = torch.tensor(reference_counts, dtype=torch.float64) / (trials * k)

    assert _tv(empirical, reference) <= 0.02
    assert _tv(reference, _optimal_policy(pi_sft, reward_of, beta)) > 0.05
    assert _tv(empirical, _optimal_policy(pi_sft, reward_of, 1.0)) > 0.1  # β matters for k > 1 as well


# ----------------------------------------------------------------------------------------------------------------
# Limits and invariances
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_beta_to_zero_accepts_top_k_in_reward_order(seed):
    """β = 1e-6: only the remaining maximum has non-zero acceptance probability, so the result is the top-k."""
    rewards = torch.randperm(20, generator=_seeded(100 + seed)).double() * 0.1  # distinct, gaps of 0.1
    accepted = statistical_rejection_sampling(rewards, 5, 1e-6, generator=_seeded(seed))
    assert accepted == torch.argsort(rewards, descending=True)[:5].tolist()


def test_beta_to_infinity_accepts_first_k_of_visiting_order():
    """β = 1e9: every candidate is accepted with probability ≈ 1 in the first round, so the result is the first k
    of the documented visiting order (stable argsort of `torch.rand(1, N, dtype=float64)` drawn first)."""
    rewards = torch.linspace(-5.0, 5.0, 12)
    for seed in range(5):
        keys = torch.rand(1, 12, generator=_seeded(seed), dtype=torch.float64)
        visiting_order = torch.argsort(keys, dim=1, stable=True)[0].tolist()
        assert statistical_rejection_sampling(rewards, 4, 1e9, generator=_seeded(seed)) == visiting_order[:4]
        assert statistical_rejection_sampling(rewards, 4, math.inf, generator=_seeded(seed)) == visiting_order[:4]


def test_beta_to_infinity_is_uniform_over_indices():
    """β = 1e9, 3 of 10 with very different rewards: each index is accepted with probability 3/10 (no index bias)."""
    trials = 20000
    rewards = torch.linspace(-5.0, 5.0, 10).expand(trials, 10)
    accepted = torch.tensor(batched_statistical_rejection_sampling(rewards, 3, 1e9, generator=_seeded(4)))
    frequency = torch.bincount(accepted.flatten(), minlength=10).double() / trials
    assert torch.allclose(frequency, torch.full((10,), 0.3, dtype=torch.float64), atol=0.02)
    first = torch.bincount(accepted[:, 0], minlength=10).double() / trials  # first accepted is uniform too
    assert torch.allclose(first, torch.full((10,), 0.1, dtype=torch.float64), atol=0.015)


def test_shift_and_joint_scale_invariance():
    """Only (r − r_max)/β matters: adding a constant, or scaling rewards and β by the same power of two, gives the
    same output under the same seed."""
    rewards = torch.randn(64, generator=_seeded(5), dtype=torch.float64)
    for seed in range(5):
        base = statistical_rejection_sampling(rewards, 8, 0.5, generator=_seeded(seed))
        assert statistical_rejection_sampling(rewards + 1000.0, 8, 0.5, generator=_seeded(seed)) == base
        assert statistical_rejection_sampling(rewards * 4.0, 8, 2.0, generator=_seeded(seed)) == base


# ----------------------------------------------------------------------------------------------------------------
# Indices, edge cases, reproducibility
# ----------------------------------------------------------------------------------------------------------------


def test_identical_candidates_are_separate():
    """Identical rewards (think identical texts) are N separate candidates: asking for N returns all N indices."""
    accepted = statistical_rejection_sampling([0.7] * 10, 10, 0.5, generator=_seeded(0))
    assert sorted(accepted) == list(range(10))


def test_fewer_candidates_than_requested_returns_all_in_acceptance_order():
    """N < num_samples: no error, all N indices, ordered by acceptance (with β → 0: by decreasing reward)."""
    rewards = [0.1, 0.9, 0.5, 0.3, 0.7]
    accepted = statistical_rejection_sampling(rewards, 8, 0.5, generator=_seeded(0))
    assert sorted(accepted) == list(range(5))
    assert statistical_rejection_sampling(rewards, 8, 1e-6, generator=_seeded(0)) == [1, 4, 2, 3, 0]
    assert statistical_rejection_sampling([], 3, 0.5) == []
    ragged = batched_statistical_rejection_sampling([rewards, [0.0] * 12, [], [2.0]], 8, 1e-6, generator=_seeded(0))
    assert ragged[0] == [1, 4, 2, 3, 0]
    assert len(ragged[1]) == 8 and len(set(ragged[1])) == 8 and max(ragged[1]) < 12
    assert ragged[2] == []
    assert ragged[3] == [0]


def test_outputs_are_distinct_valid_indices_and_inputs_interchangeable():
    rewards = torch.randn(30, generator=_seeded(6))
    from_tensor = statistical_rejection_sampling(rewards, 10, 0.3, generator=_seeded(7))
    from_list = statistical_rejection_sampling(rewards.tolist(), 10, 0.3, generator=_seeded(7))
    assert from_tensor == from_list
    assert len(from_tensor) == 10 and len(set(from_tensor)) == 10 and all(0 <= i < 30 for i in from_tensor)


def test_reproducible_and_seed_dependent():
    rewards = torch.randn(64, generator=_seeded(8))
    first = statistical_rejection_sampling(rewards, 8, 0.5, generator=_seeded(9))
    assert statistical_rejection_sampling(rewards, 8, 0.5, generator=_seeded(9)) == first
    others = {tuple(statistical_rejection_sampling(rewards, 8, 0.5, generator=_seeded(s))) for s in range(10, 20)}
    assert len(others | {tuple(first)}) > 1


def test_single_prompt_equals_batched_with_one_row():
    rewards = torch.randn(64, generator=_seeded(10))
    single = statistical_rejection_sampling(rewards, 8, 0.5, generator=_seeded(11))
    assert batched_statistical_rejection_sampling(rewards[None], 8, 0.5, generator=_seeded(11)) == [single]
    assert batched_statistical_rejection_sampling([rewards.tolist()], 8, 0.5, generator=_seeded(11)) == [single]
    assert batched_statistical_rejection_sampling([], 8, 0.5) == []


# ----------------------------------------------------------------------------------------------------------------
# Pairing
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(0, 18))
def test_first_round_pairs(n):
    rewards = torch.randn(n, generator=_seeded(n)).tolist()
    pairs = first_round_pairs(rewards, generator=_seeded(100 + n))
    assert len(pairs) == n // 2
    used = [i for pair in pairs for i in pair]
    assert len(used) == len(set(used)) and all(0 <= i < n for i in used)  # disjoint, valid
    assert all(rewards[chosen] >= rewards[rejected] for chosen, rejected in pairs)
    assert first_round_pairs(rewards, generator=_seeded(100 + n)) == pairs


@pytest.mark.parametrize("n", range(2, 18))
def test_tournament_pairs(n):
    rewards = torch.randn(n, generator=_seeded(n)).tolist()
    pairs = tournament_pairs(rewards, generator=_seeded(200 + n))
    assert len(pairs) == n - 1
    assert all(rewards[chosen] > rewards[rejected] for chosen, rejected in pairs)
    rejected = [r for _, r in pairs]
    best = max(range(n), key=rewards.__getitem__)
    assert best not in rejected
    assert sorted(rejected) == sorted(set(range(n)) - {best})  # every other index rejected exactly once
    assert tournament_pairs(rewards, generator=_seeded(200 + n)) == pairs


def test_tournament_is_a_bracket_not_sorted_neighbours():
    """n = 8: matches are 4 + 2 + 1, each later match is between winners of the previous round; the final is the
    argmax against the winner of the other half, not necessarily the second best."""
    rewards = [float(i) for i in range(8)]
    finals_opponents = set()
    for seed in range(30):
        pairs = tournament_pairs(rewards, generator=_seeded(seed))
        first, second, final = pairs[:4], pairs[4:6], pairs[6]
        first_winners = {c for c, _ in first}
        assert {i for pair in second for i in pair} == first_winners
        assert set(final) == {c for c, _ in second}
        assert final[0] == 7
        finals_opponents.add(final[1])
    assert len(finals_opponents) > 1


def test_pairing_uses_randomness():
    rewards = torch.randn(8, generator=_seeded(0)).tolist()
    first_round = {tuple(sorted(first_round_pairs(rewards, generator=_seeded(s)))) for s in range(10)}
    tournament = {tuple(sorted(tournament_pairs(rewards, generator=_seeded(s)))) for s in range(10)}
    assert len(first_round) > 1
    assert len(tournament) > 1


def test_pairing_ties_keep_all_indices():
    """Equal rewards: a tie keeps the shuffled order; the bracket still has n − 1 matches and one champion."""
    pairs = tournament_pairs([1.0] * 5, generator=_seeded(0))
    assert len(pairs) == 4 and len({r for _, r in pairs}) == 4
    assert len(first_round_pairs([1.0] * 5, generator=_seeded(0))) == 2
    assert tournament_pairs([3.0]) == [] and first_round_pairs([3.0]) == []


# ----------------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------------


def test_non_finite_reward_names_the_index():
    with pytest.raises(ValueError, match=r"rewards\[2\]` is nan"):
        statistical_rejection_sampling([0.0, 1.0, float("nan"), 2.0], 1, 0.5)
    with pytest.raises(ValueError, match=r"rewards\[0\]` is inf"):
        statistical_rejection_sampling(torch.tensor([math.inf, 1.0]), 1, 0.5)
    with pytest.raises(ValueError, match=r"rewards\[1\]\[2\]` is -inf"):
        batched_statistical_rejection_sampling([[0.0], [1.0, 2.0, -math.inf]], 1, 0.5)
    with pytest.raises(ValueError, match=r"rewards\[1\]` is nan"):
        tournament_pairs([0.0, float("nan")])
    with pytest.raises(ValueError, match=r"rewards\[0\]` is nan"):
        first_round_pairs([float("nan"), 0.0])


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan")])
def test_non_positive_beta(beta):
    with pytest.raises(ValueError, match="`beta` must be a positive number"):
        statistical_rejection_sampling([0.0, 1.0], 1, beta)
    with pytest.raises(ValueError, match="`beta` must be a positive number"):
        batched_statistical_rejection_sampling([[0.0, 1.0]], 1, beta)


@pytest.mark.parametrize("num_samples", [0, -3, 1.5, True])
def test_bad_num_samples(num_samples):
    with pytest.raises(ValueError, match="`num_samples` must be an integer >= 1"):
        statistical_rejection_sampling([0.0, 1.0], num_samples, 0.5)


def test_wrong_rank():
    with pytest.raises(ValueError, match=r"must be 1-D of shape \(N,\).*got shape \(2, 3\)"):
        statistical_rejection_sampling(torch.zeros(2, 3), 1, 0.5)
    with pytest.raises(ValueError, match=r"must be 1-D of shape \(N,\)"):
        statistical_rejection_sampling(1.0, 1, 0.5)
    with pytest.raises(ValueError, match=r"must be a \(P, N\) tensor.*got shape \(3,\)"):
        batched_statistical_rejection_sampling(torch.zeros(3), 1, 0.5)
    with pytest.raises(ValueError, match=r"must be 1-D of shape \(N,\)"):
        first_round_pairs(torch.zeros(2, 2))
