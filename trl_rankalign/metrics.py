"""Ranking-quality metrics for logging: how well a policy's per-completion rewards order each ranked list.

Every function takes ``rewards (B, K)`` (the policy's implicit rewards or scores), ``scores (B, K)`` (the labels,
higher is better) and ``mask (B, K)`` (False at padded slots) and returns per-prompt values ``(B,)`` with NaN where
the metric is undefined for that prompt (no strictly ordered pair, or a constant list); callers gather across
processes and take ``nanmean``. Pure torch, no grad.
"""

import torch


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
    pairs, score_diff, reward_diff = _pair_masks(rewards.float(), scores.float(), mask)
    ordered = pairs & (score_diff != 0)
    correct = (ordered & (score_diff == reward_diff)).sum(dim=(1, 2)).float()
    total = ordered.sum(dim=(1, 2)).float()
    return torch.where(total > 0, correct / total.clamp(min=1), torch.nan)


@torch.no_grad()
def kendall_tau(rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Kendall's tau-b between rewards and scores over each list's valid items (ties handled as in tau-b). ``(B,)``.

    tau_b = (C - D) / sqrt((n0 - n_rewards_tied) * (n0 - n_scores_tied)), n0 the number of pairs.
    """
    pairs, score_diff, reward_diff = _pair_masks(rewards.float(), scores.float(), mask)
    pairs = pairs.float()
    concordance = (score_diff * reward_diff * pairs).sum(dim=(1, 2))  # C - D
    untied_scores = ((score_diff != 0).float() * pairs).sum(dim=(1, 2))  # n0 - n2
    untied_rewards = ((reward_diff != 0).float() * pairs).sum(dim=(1, 2))  # n0 - n1
    denominator = (untied_scores * untied_rewards).sqrt()
    return torch.where(denominator > 0, concordance / denominator.clamp(min=1e-12), torch.nan)


@torch.no_grad()
def ndcg(rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """NDCG@K of the order the rewards induce, with linear gains ``score - min(score)`` of each list. ``(B,)``.

    Linear gains on min-shifted scores keep the metric defined for any real-valued scores (reward-model outputs
    can be negative or large, where LiPO's ``2^score - 1`` would overflow). Ties in the rewards are broken by
    position, which is the worst case for no tie and exact otherwise.
    """
    rewards, scores = rewards.float(), scores.float()
    big = torch.finfo(torch.float32).max
    min_score = torch.where(mask, scores, big).min(dim=1, keepdim=True).values
    gains = torch.where(mask, scores - min_score, 0.0)  # (B, K)
    positions = torch.arange(1, scores.size(1) + 1, device=scores.device, dtype=torch.float32)
    discounts = 1.0 / torch.log2(1.0 + positions)  # (K,)
    order = torch.where(mask, rewards, -big).argsort(dim=1, descending=True, stable=True)
    dcg = (gains.gather(1, order) * discounts).sum(dim=1)
    ideal = (gains.sort(dim=1, descending=True).values * discounts).sum(dim=1)
    return torch.where(ideal > 0, dcg / ideal.clamp(min=1e-12), torch.nan)
