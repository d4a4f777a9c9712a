# Copyright 2025 The trl-rankalign authors. Licensed under the Apache License, Version 2.0.
"""Statistical rejection sampling and preference-pair construction for RSO.

Reference: Liu et al., "Statistical Rejection Sampling Improves Preference Optimization", ICLR 2024
(arXiv:2309.06657), below "the paper".

The target of the sampler is the optimal policy of the KL-constrained reward maximisation objective, the paper's
Eq. (4):

    π_r(y|x) = π_sft(y|x) · exp(r(x, y) / β) / Z(x).

Given ``N`` candidates ``y_1..y_N`` drawn i.i.d. from ``π_sft(·|x)`` and their rewards, the paper's Algorithm 1
(Appendix A.1, the procedure of Section 3.2) estimates the rejection-sampling envelope ``M`` from the candidates
themselves, which turns the acceptance probability ``π_r(y) / (M · π_sft(y))`` into ``exp((r(y) − r_max) / β)``
with ``r_max`` the largest reward among the candidates not yet accepted. This module implements that algorithm on
reward tensors only (no text, no model), plus the two pairings of the paper's Section 5.2: "first-round-rank" and
"tournament-rank".

Everything here is keyed by candidate *index*: two identical generations are two separate candidates. (Algorithm 1
as printed builds ``{text: reward}``, which silently merges duplicate texts; we do not.)

All randomness comes from an optional ``torch.Generator``, so a seeded generator makes every function
reproducible. Only ``torch`` and the standard library are imported.
"""

import math
from collections.abc import Sequence

import torch


__all__ = [
    "batched_statistical_rejection_sampling",
    "first_round_pairs",
    "statistical_rejection_sampling",
    "tournament_pairs",
]

RewardsLike = torch.Tensor | Sequence[float]


# ----------------------------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------------------------


def _as_1d_rewards(rewards: RewardsLike, name: str = "rewards") -> torch.Tensor:
    """Converts one prompt's rewards to a float64 CPU tensor of shape ``(N,)``, raising ``ValueError`` if invalid."""
    try:
        if isinstance(rewards, torch.Tensor):
            tensor = rewards.detach().to(device="cpu", dtype=torch.float64)
        else:
            tensor = torch.as_tensor(rewards, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"`{name}` must be a 1-D sequence of floats of shape (N,); could not convert it: {error}"
        ) from error
    if tensor.dim() != 1:
        raise ValueError(
            f"`{name}` must be 1-D of shape (N,) (one prompt's candidate rewards), got shape {tuple(tensor.shape)}; "
            "use `batched_statistical_rejection_sampling` for several prompts."
        )
    bad = (~torch.isfinite(tensor)).nonzero()
    if bad.numel() > 0:
        index = int(bad[0, 0])
        raise ValueError(f"`{name}[{index}]` is {tensor[index].item()}; every reward must be finite.")
    return tensor


def _check_sampling_args(num_samples: int, beta: float) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"`num_samples` must be an integer >= 1, got {num_samples!r}.")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or math.isnan(beta) or not beta > 0:
        raise ValueError(f"`beta` must be a positive number (β > 0 in the paper's Eq. (4)), got {beta!r}.")


# ----------------------------------------------------------------------------------------------------------------
# Statistical rejection sampling (the paper's Algorithm 1)
# ----------------------------------------------------------------------------------------------------------------


def _rejection_sample_padded(
    rewards: torch.Tensor, valid: torch.Tensor, num_samples: int, beta: float, generator: torch.Generator | None
) -> list[list[int]]:
    """Vectorised Algorithm 1 over a padded batch.

    Args:
        rewards: `(P, N)` float64, finite everywhere (padding slots hold any finite value).
        valid: `(P, N)` bool, False for padding slots.

    Returns:
        One list of accepted candidate indices per prompt, in acceptance order.

    Each round, for every prompt that still needs samples and still has candidates:
      1. ``r_max`` = max reward over the prompt's remaining (not yet accepted) candidates;
      2. a uniformly random visiting order of the `N` slots is drawn (argsort of `torch.rand` keys);
      3. one ``u ~ U[0, 1)`` per slot is drawn; a remaining candidate is accepted iff ``u < exp((r − r_max) / β)``;
      4. following the visiting order, accepted candidates are kept until ``num_samples`` is reached (Algorithm 1's
         ``break``); they are removed from the pool.
    The remaining maximum has acceptance probability exp(0) = 1 > u, so every active prompt accepts at least one
    candidate per round and the loop ends after at most ``num_samples`` rounds.
    """
    num_prompts, num_slots = rewards.shape
    remaining = valid.clone()  # (P, N)
    counts = torch.zeros(num_prompts, dtype=torch.long)  # (P,)
    never = num_samples * num_slots + num_slots  # larger than any acceptance stamp
    stamp = torch.full((num_prompts, num_slots), never, dtype=torch.long)  # (P, N): round * N + visiting position
    slot_positions = torch.arange(num_slots).expand(num_prompts, num_slots)  # (P, N)
    neg_inf = torch.tensor(-math.inf, dtype=torch.float64)

    round_index = 0
    while True:
        active = remaining.any(dim=1) & (counts < num_samples)  # (P,)
        if not bool(active.any()):
            break
        order = torch.argsort(
            torch.rand(num_prompts, num_slots, generator=generator, dtype=torch.float64), dim=1, stable=True
        )  # (P, N): visiting order, a uniform random permutation per prompt
        u = torch.rand(num_prompts, num_slots, generator=generator, dtype=torch.float64)  # (P, N)

        r_max = torch.where(remaining, rewards, neg_inf).amax(dim=1, keepdim=True)  # (P, 1)
        r_max = torch.where(torch.isfinite(r_max), r_max, torch.zeros_like(r_max))  # empty pools: any finite value
        accept_prob = torch.exp((rewards - r_max) / beta)  # (P, N), exp((r − r_max)/β) ∈ (0, 1] on remaining slots
        accepted = remaining & (u < accept_prob) & active[:, None]  # (P, N)

        # Algorithm 1 stops as soon as `num_samples` are accepted while visiting candidates: keep the first
        # `needed` acceptances in visiting order, i.e. a uniformly random subset of this round's acceptances.
        accepted_in_order = accepted.gather(1, order)  # (P, N)
        needed = (num_samples - counts)[:, None]  # (P, 1)
        kept_in_order = accepted_in_order & (accepted_in_order.cumsum(dim=1) <= needed)  # (P, N)
        kept = torch.zeros_like(kept_in_order).scatter_(1, order, kept_in_order)  # (P, N), back to slot order
        visit_position = torch.empty_like(order).scatter_(1, order, slot_positions)  # (P, N)

        stamp = torch.where(kept, round_index * num_slots + visit_position, stamp)
        remaining &= ~kept
        counts += kept.sum(dim=1)
        round_index += 1

    width = min(num_samples, num_slots)
    ordered = stamp.argsort(dim=1, stable=True)[:, :width].tolist()  # accepted slots first, by acceptance time
    return [row[:count] for row, count in zip(ordered, counts.tolist())]


def statistical_rejection_sampling(
    rewards: RewardsLike,
    num_samples: int,
    beta: float,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Draws ``num_samples`` distinct candidates of one prompt from π_r ∝ π_sft·exp(r/β): the paper's Algorithm 1.

    The candidates must be i.i.d. samples of the SFT policy π_sft(·|x); only their rewards are needed. The target
    is the paper's Eq. (4), π_r(y|x) = π_sft(y|x) exp(r(x, y)/β) / Z(x).

    Algorithm (matching Algorithm 1 of the paper, Appendix A.1, candidates keyed by index):
        repeat in rounds until ``num_samples`` are accepted:
            r_max ← max reward among the candidates not yet accepted;
            visit the remaining candidates in a uniformly random order; for each, draw u ~ U[0, 1) and accept it
            if u < exp((r − r_max) / β), stopping as soon as ``num_samples`` are accepted in total;
            remove the accepted candidates from the pool (sampling without replacement).
    The acceptance probability exp((r − r_max)/β) is π_r(y) / (M · π_sft(y)) with the envelope M estimated from the
    candidates (the paper's footnote 6 and Appendix A.1). Algorithm 1 as printed visits candidates in dict
    (generation) order; for i.i.d. candidates that is the same in distribution, but a random order also makes each
    *index* equally likely to be picked when a round accepts more than needed: the kept ones are then a uniformly
    random subset of that round's acceptances. Within a round all u are drawn at once (vectorised), which is
    equivalent because r_max is fixed during a round.

    Exactness: with a fixed threshold r* = max_y r(y) over the whole support, accepting with probability
    exp((r − r*)/β) = π_r(y) / (M π_sft(y)), M = exp(r*/β) / Z, is textbook rejection sampling with the exact
    envelope, and keeping one uniformly random acceptance is exactly π_r-distributed. In the 1-of-N case Algorithm 1
    coincides with that scheme whenever the top-reward output y* is among the candidates (then r_max = r*); it
    differs only on the event that y* is missing, of probability (1 − π_sft(y*))^N → 0, so it is exact in the limit
    N → ∞ (the paper's Theorem 1). For k > 1, later rounds use a lower r_max and exclude earlier picks, so the k
    accepted samples are distinct candidates whose marginal is close to, but not exactly, π_r at finite N.

    Limits (Section 3.2): β → 0 accepts exactly the top-``num_samples`` candidates by reward, in decreasing
    reward order (top-k-over-N); β → ∞ accepts every visited candidate, i.e. a uniformly random
    ``num_samples``-subset, namely the first ``num_samples`` of the first round's visiting order. Adding a
    constant to all rewards changes nothing.

    Randomness: only ``generator`` (or torch's default generator when ``None``) is used. Each round draws, in this
    order, ``torch.rand(1, N, dtype=float64)`` keys whose stable argsort is the visiting order, then
    ``torch.rand(1, N, dtype=float64)`` uniforms ``u`` (one per candidate, used for the remaining ones).

    Args:
        rewards: `(N,)` tensor or sequence of floats, the candidates' rewards r(x, y_i); must be finite.
        num_samples: number of distinct candidates to accept (k in "k-of-N"), >= 1. The paper uses 8 of 64.
        beta: β > 0 of Eq. (4); the paper uses β = 0.5. ``math.inf`` is allowed (uniform sampling).
        generator: optional CPU ``torch.Generator`` for reproducibility.

    Returns:
        Distinct candidate indices into ``rewards``, in acceptance order (round by round, then visiting order),
        of length ``min(num_samples, N)``. When ``N < num_samples`` (including N = 0), no error is raised: all
        ``N`` indices are returned, ordered by the round in which the algorithm accepted them.

    Raises:
        ValueError: ``rewards`` not 1-D or containing NaN/±inf (the message names the first offending index),
            ``num_samples < 1``, or ``beta <= 0``.
    """
    tensor = _as_1d_rewards(rewards)
    _check_sampling_args(num_samples, beta)
    if tensor.numel() == 0:
        return []
    valid = torch.ones(1, tensor.numel(), dtype=torch.bool)
    return _rejection_sample_padded(tensor[None, :], valid, num_samples, float(beta), generator)[0]


def batched_statistical_rejection_sampling(
    rewards: torch.Tensor | Sequence[RewardsLike],
    num_samples: int,
    beta: float,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """:func:`statistical_rejection_sampling` for many prompts at once, vectorised across prompts.

    Args:
        rewards: a `(P, N)` tensor, or a list of P per-prompt reward sequences whose lengths may differ (ragged;
            padded internally, padding is never accepted). Every reward must be finite.
        num_samples: number of distinct candidates to accept per prompt, >= 1.
        beta: β > 0 of the paper's Eq. (4).
        generator: optional CPU ``torch.Generator``.

    Returns:
        P lists of candidate indices (into each prompt's own rewards), each in acceptance order and of length
        ``min(num_samples, N_p)``; a prompt with fewer than ``num_samples`` candidates returns all of them,
        as in the single-prompt function.

    The per-prompt algorithm is identical to :func:`statistical_rejection_sampling`, but random numbers are
    drawn as `(P, N_max)` blocks, so prompt p's result is not the same draw as calling the single-prompt function
    on it (it is the same in distribution, and reproducible for a given generator state and input).

    Raises:
        ValueError: a 1-D or >2-D tensor, a non-finite reward (the message names ``rewards[p][i]``),
            ``num_samples < 1`` or ``beta <= 0``.
    """
    _check_sampling_args(num_samples, beta)
    if isinstance(rewards, torch.Tensor):
        if rewards.dim() != 2:
            raise ValueError(
                f"`rewards` must be a (P, N) tensor or a list of per-prompt reward lists, got shape "
                f"{tuple(rewards.shape)}; use `statistical_rejection_sampling` for a single prompt."
            )
        rows = list(rewards.detach().to(device="cpu", dtype=torch.float64).unbind(0))
    else:
        rows = list(rewards)
    tensors = [_as_1d_rewards(row, name=f"rewards[{p}]") for p, row in enumerate(rows)]
    if not tensors:
        return []
    width = max(t.numel() for t in tensors)
    if width == 0:
        return [[] for _ in tensors]
    padded = torch.zeros(len(tensors), width, dtype=torch.float64)  # (P, N_max)
    valid = torch.zeros(len(tensors), width, dtype=torch.bool)  # (P, N_max)
    for p, row in enumerate(tensors):
        padded[p, : row.numel()] = row
        valid[p, : row.numel()] = True
    return _rejection_sample_padded(padded, valid, num_samples, float(beta), generator)


# ----------------------------------------------------------------------------------------------------------------
# Pairing (the paper's Section 5.2: "first-round-rank" and "tournament-rank")
# ----------------------------------------------------------------------------------------------------------------


def _label(first: int, second: int, values: list[float]) -> tuple[int, int]:
    """Orders a match as (chosen, rejected) by reward; on a tie the first (in shuffled order) is chosen."""
    return (first, second) if values[first] >= values[second] else (second, first)


def first_round_pairs(rewards: RewardsLike, generator: torch.Generator | None = None) -> list[tuple[int, int]]:
    """Random disjoint pairs labelled by reward: the paper's "first-round-rank" (Section 5.2, Table 2).

    The ``n`` indices are shuffled with ``torch.randperm(n, generator=generator)`` and consecutive ones are paired,
    giving ``n // 2`` disjoint pairs; with odd ``n`` the last index of the shuffle is left out. Each pair is
    returned as ``(chosen, rejected)`` with ``rewards[chosen] >= rewards[rejected]``. Equal rewards: the pair keeps
    its shuffled order (the first of the two is "chosen"), so ties are broken uniformly at random; callers that
    must not train on ties should drop pairs with equal rewards.

    Args:
        rewards: `(n,)` tensor or sequence of finite floats (e.g. the rewards of the accepted samples).
        generator: optional CPU ``torch.Generator``.

    Returns:
        ``n // 2`` pairs of indices into ``rewards``.
    """
    tensor = _as_1d_rewards(rewards)
    values = tensor.tolist()
    perm = torch.randperm(len(values), generator=generator).tolist()
    return [_label(perm[i], perm[i + 1], values) for i in range(0, len(perm) - 1, 2)]


def tournament_pairs(rewards: RewardsLike, generator: torch.Generator | None = None) -> list[tuple[int, int]]:
    """Single-elimination tournament labelled by reward: the paper's "tournament-rank" (Section 5.2, Table 2).

    The ``n`` indices are shuffled once with ``torch.randperm(n, generator=generator)`` (the bracket). Each round
    pairs consecutive entrants; the higher reward wins and advances, and each match yields one pair
    ``(chosen=winner, rejected=loser)``. With an odd number of entrants the last one gets a bye and advances
    without playing. Rounds continue until one entrant remains, so there are exactly ``n − 1`` pairs (each match
    eliminates one entrant); for n = 8 these are 4 + 2 + 1 = 7 pairs.

    Guarantees: every index except the champion is rejected exactly once; with a unique maximum, the argmax is the
    champion and is never rejected. Equal rewards: the entrant earlier in the current round's order wins (random,
    as the bracket is shuffled), so with tied maxima one of them is the champion and the others are rejected once.

    This is a real bracket over a random shuffle, not pairs of sorted neighbours: a high-reward candidate meets
    random opponents, as in the paper and SLiC.

    Args:
        rewards: `(n,)` tensor or sequence of finite floats.
        generator: optional CPU ``torch.Generator``.

    Returns:
        ``max(n − 1, 0)`` pairs of indices into ``rewards``, round by round in bracket order.
    """
    tensor = _as_1d_rewards(rewards)
    values = tensor.tolist()
    entrants = torch.randperm(len(values), generator=generator).tolist()
    pairs: list[tuple[int, int]] = []
    while len(entrants) > 1:
        winners = []
        for i in range(0, len(entrants) - 1, 2):
            chosen, rejected = _label(entrants[i], entrants[i + 1], values)
            pairs.append((chosen, rejected))
            winners.append(chosen)
        if len(entrants) % 2 == 1:
            winners.append(entrants[-1])  # bye
        entrants = winners
    return pairs
