"""Ranking-quality metrics for logging: how well a policy's per-completion rewards order each ranked list.

Every function takes ``rewards (B, K)`` (the policy's implicit rewards or scores), ``scores (B, K)`` (the labels,
higher is better) and ``mask (B, K)`` (False at padded slots) and returns per-prompt values ``(B,)`` with NaN where
the metric is undefined for that prompt (no strictly ordered pair, or a constant list); callers gather across
processes and take ``nanmean``. Pure torch, no grad. Computed in float64 (returned as float32): float32 would merge near-tied rewards or
scores (e.g. 0.1 and 0.1 + 1e-9) into ties, which changes tau-b and NDCG (scipy and scikit-learn work in float64).
"""

import torch


def _cpu64(rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor):
    """The inputs on the CPU, values in float64 (near-ties kept apart; MPS has no float64, and the lists are small)."""
    return rewards.detach().cpu().double(), scores.detach().cpu().double(), mask.detach().cpu().bool()


def _pair_masks(rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor):
    valid = mask[:, :, None] & mask[:, None, :]  # (B, K, K)
    upper = torch.ones_like(valid[0]).triu(diagonal=1)  # each unordered pair once
    pairs = valid & upper
    score_diff = torch.sign(scores[:, :, None] - scores[:, None, :])  # (B, K, K)
    reward_diff = torch.sign(rewards[:, :, None] - rewards[:, None, :])
    return pairs, score_diff, reward_diff


@torch.no_grad()
def pairwise_accuracy(rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fraction of strictly ordered pairs (by score) that the rewards order the same way, strictly. ``(B,)``."""
    pairs, score_diff, reward_diff = _pair_masks(*_cpu64(rewards, scores, mask))
    ordered = pairs & (score_diff != 0)
    correct = (ordered & (score_diff == reward_diff)).sum(dim=(1, 2)).float()
    total = ordered.sum(dim=(1, 2)).float()
    return torch.where(total > 0, correct / total.clamp(min=1), torch.nan).float()


@torch.no_grad()
def kendall_tau(rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Kendall's tau-b between rewards and scores over each list's valid items (ties handled as in tau-b). ``(B,)``.

    tau_b = (C - D) / sqrt((n0 - n_rewards_tied) * (n0 - n_scores_tied)), n0 the number of pairs.
    """
    pairs, score_diff, reward_diff = _pair_masks(*_cpu64(rewards, scores, mask))
    pairs = pairs.double()
    concordance = (score_diff * reward_diff * pairs).sum(dim=(1, 2))  # C - D
    untied_scores = ((score_diff != 0).double() * pairs).sum(dim=(1, 2))  # n0 - n2
    untied_rewards = ((reward_diff != 0).double() * pairs).sum(dim=(1, 2))  # n0 - n1
    denominator = (untied_scores * untied_rewards).sqrt()
    return torch.where(denominator > 0, concordance / denominator.clamp(min=1e-12), torch.nan).float()


@torch.no_grad()
def ndcg(rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Tie-averaged NDCG@K of the order the rewards induce, over each list's valid items. ``(B,)``.

    Gains are the min-shifted scores ``g_i = score_i - min(score over the list's valid items)``: linear gains keep
    the metric defined for any real-valued scores (reward-model outputs can be negative or large, where LiPO's
    ``2^score - 1`` would overflow), and the shift makes them non-negative. Only differences of scores matter, so
    adding a constant to a list's scores leaves its NDCG unchanged.

    Ties in the rewards are averaged as in scikit-learn's ``ndcg_score(gains, rewards, ignore_ties=False)``
    (McSherry & Najork 2008): the valid items tied at one reward occupy positions ``a+1 .. a+c`` (``a`` valid items
    rewarded strictly higher, ``c`` tied including itself) and each gets the mean of their discounts,

        DCG  = Σ_i g_i · (D[a_i + c_i] − D[a_i]) / c_i,   D[n] = Σ_{p=1..n} 1 / log2(1 + p)
        IDCG = Σ_p g_(p) / log2(1 + p)   over the gains sorted descending
        NDCG = DCG / IDCG

    so a constant reward (an untrained policy) scores the expected NDCG of a random order, not the 1.0 that breaking
    ties by the (best-first) slot position would give. NaN where IDCG = 0 (fewer than two valid items, or all valid
    scores equal); scikit-learn returns 0 there.
    """
    rewards, scores, mask = _cpu64(rewards, scores, mask)
    K = scores.size(1)
    big = torch.finfo(torch.float64).max
    min_score = torch.where(mask, scores, big).min(dim=1, keepdim=True).values  # (B, 1)
    gains = torch.where(mask, scores - min_score, 0.0)  # (B, K) >= 0, 0 at padded slots

    positions = torch.arange(1, K + 1, device=scores.device, dtype=torch.float64)
    discounts = 1.0 / torch.log2(1.0 + positions)  # (K,)
    cum_discounts = torch.cat([discounts.new_zeros(1), discounts.cumsum(0)])  # (K + 1,) D[0..K]

    valid_j = mask[:, None, :]  # (B, 1, K)
    higher = (rewards[:, None, :] > rewards[:, :, None]) & valid_j  # (B, K, K) valid j rewarded above i
    tied = (rewards[:, None, :] == rewards[:, :, None]) & valid_j  # (B, K, K) valid j tied with i (i included)
    above = higher.sum(-1)  # (B, K) a_i
    count = tied.sum(-1).clamp(min=1)  # (B, K) c_i; 0 only at padded (or NaN) slots, whose gain is 0
    end = (above + count).clamp(max=K)  # (B, K)
    mean_discount = (cum_discounts[end] - cum_discounts[above]) / count  # (B, K)
    dcg = torch.where(mask, gains * mean_discount, 0.0).sum(dim=1)  # (B,)

    ideal = (gains.sort(dim=1, descending=True).values * discounts).sum(dim=1)  # (B,)
    return torch.where(ideal > 0, dcg / ideal.clamp(min=1e-12), torch.nan).float()
