"""Pure listwise preference losses.

Every function here takes `(B, K)` tensors (B prompts, K completions per prompt) plus a `(B, K)` boolean `mask`
(False marks a padded slot) and returns `(losses, rewards)`:

- `losses: (B,)` float32, one loss per prompt. The caller (the trainer) reduces them (mean over the batch) and logs.
  A row with fewer than two valid completions carries no ranking information and gets loss 0.
- `rewards: (B, K)` float32, the detached per-completion reward implied by the loss (0 at padded slots), for
  logging.

Conventions shared by all losses:

- The collator sorts each row by score, descending and stable, so valid slots come best-first. The losses do not
  rely on it: "k ranks before j" is always computed from the scores, ties broken by position, which is the same
  thing on sorted input. The mask need not be a prefix.
- Inputs are cast to float32. Padded slots are replaced with finite values by `torch.where` before any
  sum or log-sum-exp. Masked-out log-sum-exp entries use the finite fill `torch.finfo(torch.float32).min`, not
  `-inf`. So padded slots, fully tied lists, log-probs near -1e4 and beta in [1e-3, 10] give finite losses and
  finite gradients, and the gradient at a padded slot is exactly zero.
- Scores and every weight derived from them carry no gradient.

Ties (equal scores among valid completions) in `plackett_luce_loss`, through its `ties` argument:

- `"efron"` (default): Efron's approximation to the likelihood of a ranking with tied groups. It is the closest
  cheap approximation to the exact tied-rank likelihood (the exact one sums over all m! orders of each group).
  Without ties it is exactly Plackett-Luce. It is symmetric in the tied completions, so it never imposes an
  order on them.
- `"breslow"`: Breslow's partial likelihood. Each member of a tied group competes against the whole group and
  everything below it. It is also symmetric in tied completions and equal to Plackett-Luce without ties. It is
  cruder than Efron: every tied member is charged the full risk set, so the denominator is overstated, and the
  error grows with the size of the group.
- `"ordered"`: plain Plackett-Luce in the collator's stable order, so ties are broken by input position. This
  imposes an arbitrary order on tied completions.

Score scale: `lipo_lambda_loss` refuses |score| > 64 (its gain is 2^score) and `pro_loss` with reward-difference
temperatures refuses a list whose largest weight (max score − min score) / temperature exceeds 1e4 (it multiplies the
log-probs). Both raise `ValueError` telling the user to rescale rather than train on overflowing gradients.

`lipo_lambda_loss` never orders ties: tied pairs contribute nothing. `pro_loss` follows the PRO formula, in which a
tied pair gets weight 0. Its stages still follow the stable order, so it is not symmetric in tied completions.

`rrhf_loss` and `slic_hf_loss` are reference-free like PRO; tied pairs contribute nothing to either.
"""

import math

import torch
import torch.nn.functional as F


__all__ = [
    "PL_TIE_MODES",
    "PRO_TEMPERATURE_MODES",
    "lipo_lambda_loss",
    "plackett_luce_loss",
    "pro_loss",
    "rrhf_loss",
    "slic_hf_loss",
]

PL_TIE_MODES = ("efron", "breslow", "ordered")
PRO_TEMPERATURE_MODES = ("reward_difference", "constant")

# Finite stand-in for -inf inside log-sum-exp: exp(_NEG_FILL - max) underflows to exactly 0 and its gradient is 0,
# while -inf would give NaN in rows where every entry is masked.
_NEG_FILL = torch.finfo(torch.float32).min
# LiPO gains are G = 2**psi - 1. float32 overflows at 2**128, and well before that one pair's gain swamps all others.
_LIPO_MAX_ABS_SCORE = 64.0
# PRO's reward-difference weights w = (r_k - r_i) / temperature multiply the log-probs, and every gradient that reaches
# the model is scaled by them: |dL/ds_i| <= (K - 1) * max w (each stage's softmax factors are <= 1). A bound of 1e4 on
# the largest weight of a list keeps |w * s| <= 1e8 for mean log-probs down to -1e4 (the range this module supports),
# far inside float32 (3.4e38), and keeps the gradients within a small multiple of 1e4: representable even in float16
# (max 65504), with squares that the float32 sum of a gradient-norm clip cannot overflow. A 1e20 gap instead gives
# gradients of order 1e20, past sqrt(float32 max) ~ 1.8e19, so the squared grad norm is inf and every update is
# skipped without an error. Past w ~ 1e2 a stage's softmax is already one-hot for log-prob gaps >= 1, so larger gaps
# add scale, not ranking information; reward-model scores on an O(1-100) scale stay well inside the bound.
_PRO_MAX_WEIGHT = 1e4


def _check_inputs(mask: torch.Tensor, **tensors: torch.Tensor) -> torch.Tensor:
    """Validates that every tensor is `(B, K)` like `mask` and returns the mask as bool."""
    if mask.dim() != 2:
        raise ValueError(f"`mask` must have shape (B, K), got {tuple(mask.shape)}.")
    for name, tensor in tensors.items():
        if tensor.shape != mask.shape:
            raise ValueError(
                f"`{name}` must have the same (B, K) shape as `mask` {tuple(mask.shape)}, got {tuple(tensor.shape)}."
            )
    return mask.to(torch.bool)


def _check_positive(name: str, value: float) -> None:
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a positive finite number, got {value}.")


def _masked_logsumexp(x: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log Σ exp(x) over the entries where `mask` is True; ≈ `_NEG_FILL` (finite) when there are none."""
    return torch.logsumexp(torch.where(mask, x, _NEG_FILL), dim=dim)


def _ranks_after(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`after[b, k, j]`: valid j ranks at or after valid k (lower score, or equal score and position j >= k).

    This is the Plackett-Luce risk set of slot k in the stable descending order. It is the same as "j >= k" on
    sorted input, and is computed from scores so that unsorted input still means what its scores say.
    """
    K = scores.shape[-1]
    idx = torch.arange(K, device=scores.device)
    score_k = scores[:, :, None]  # (B, K, 1)
    score_j = scores[:, None, :]  # (B, 1, K)
    later = (score_j < score_k) | ((score_j == score_k) & (idx[None, None, :] >= idx[None, :, None]))  # (B, K, K)
    return later & mask[:, :, None] & mask[:, None, :]  # (B, K, K)


def plackett_luce_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    scores: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    ties: str = "efron",
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Plackett-Luce DPO: DPO's implicit reward plugged into the Plackett-Luce likelihood of the ranking.

    DPO (Rafailov et al. 2023, arXiv 2305.18290), Appendix A.3, "Deriving the DPO Objective Under the
    Plackett-Luce Model":

        u_k = β · (log π(y_k | x) − log π_ref(y_k | x))
        L   = − Σ_{k=1..K} [ u_(k) − log Σ_{j=k..K} exp u_(j) ]

    in rank order. The numerator of factor k is the k-th ranked completion, and the last term is 0. With K = 2
    and no tie this is −log σ(u_1 − u_2), TRL's "sigmoid" DPO loss.

    Tied scores are handled by `ties` (see the module docstring). For a tied group G (size m, sum of its members'
    u = Σ_G u) with risk set R(G) = {valid j : score_j ≤ score_G}:

    - `"breslow"`: Σ_G u − m · log Σ_{R(G)} e^u.
    - `"efron"`: Σ_G u − Σ_{l=0..m−1} log( Σ_{R(G)} e^u − (l/m) · Σ_G e^u ), computed in log space as
      LSE_R + log1p(−(l/m) · exp(LSE_G − LSE_R)).
    - `"ordered"`: plain Plackett-Luce with ties broken by position.

    Args:
        policy_logps (`torch.Tensor`): `(B, K)` summed log-probs of each completion under the policy.
        ref_logps (`torch.Tensor`): `(B, K)` the same under the reference model.
        scores (`torch.Tensor`): `(B, K)` scores, higher is better, equal means tied. No gradient.
        mask (`torch.Tensor`): `(B, K)` bool, False at padded slots.
        beta (`float`): DPO's β > 0.
        ties (`str`, *optional*, defaults to `"efron"`): one of `"efron"`, `"breslow"`, `"ordered"`.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: `losses (B,)` and detached implicit rewards `u (B, K)`, 0 at padded
        slots.
    """
    if ties not in PL_TIE_MODES:
        raise ValueError(f"`ties` must be one of {PL_TIE_MODES}, got {ties!r}.")
    _check_positive("beta", beta)
    mask = _check_inputs(mask, policy_logps=policy_logps, ref_logps=ref_logps, scores=scores)
    B, K = mask.shape

    u = beta * (policy_logps.float() - ref_logps.float())  # (B, K)
    u = torch.where(mask, u, 0.0)  # (B, K) padded slots hold a finite constant
    sc = scores.detach()  # (B, K) compared exactly, in the caller's dtype

    valid_j = mask[:, None, :]  # (B, 1, K)
    tied = (sc[:, None, :] == sc[:, :, None]) & valid_j  # (B, K, K) j tied with k (k itself included)
    if ties == "ordered":
        risk = _ranks_after(sc, mask)  # (B, K, K) j at or after k in the stable order
    else:
        risk = (sc[:, None, :] <= sc[:, :, None]) & valid_j  # (B, K, K) j scored no higher than k

    u_j = u[:, None, :].expand(B, K, K)  # (B, K, K) u_j, broadcast over k
    log_denom = _masked_logsumexp(u_j, risk)  # (B, K) log Σ_{R(k)} e^u
    if ties == "efron":
        idx = torch.arange(K, device=mask.device)
        group_size = tied.sum(-1).clamp(min=1)  # (B, K) m
        group_index = (tied & (idx[None, None, :] < idx[None, :, None])).sum(-1)  # (B, K) l in 0..m-1
        frac = group_index.float() / group_size.float()  # (B, K) l/m <= (m-1)/m for valid k
        # A padded k is not in its own group, so l/m could reach 1 there and log1p(-1) = -inf would turn the zero
        # gradient of the torch.where below into 0 * inf = NaN.
        frac = torch.where(mask, frac, 0.0)  # (B, K)
        log_group = _masked_logsumexp(u_j, tied)  # (B, K) log Σ_G e^u
        ratio = torch.exp((log_group - log_denom).clamp(max=0.0))  # (B, K) Σ_G e^u / Σ_R e^u <= 1
        log_denom = log_denom + torch.log1p(-frac * ratio)  # (B, K) argument >= -(m-1)/m > -1

    log_denom = torch.where(mask, log_denom, 0.0)  # (B, K)
    log_likelihood = torch.where(mask, u - log_denom, 0.0)  # (B, K) one Plackett-Luce factor per valid slot
    losses = -log_likelihood.sum(-1)  # (B,)
    return losses, u.detach()


def lipo_lambda_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    scores: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""LiPO-λ: the LambdaLoss-weighted pairwise logistic loss on DPO's implicit reward.

    Liu et al. 2024, "LiPO: Listwise Preference Optimization through Learning-to-Rank" (arXiv 2402.01878),
    LiPO-λ objective:

        s_i  = β · (log π(y_i | x) − log π_ref(y_i | x))
        L    = Σ_{ψ_i > ψ_j} Δ_ij · log(1 + exp(−(s_i − s_j)))
        Δ_ij = |G_i − G_j| · |1/D(τ_i) − 1/D(τ_j)|,   G_i = 2^ψ_i − 1,   D(τ) = log2(1 + τ)

    ψ are the scores (labels), and τ_i is the 1-based rank of completion i under the current s, descending,
    among the valid completions of its row, with ties in s broken by position. Ranks and weights are computed
    under `torch.no_grad()`. Tied pairs (ψ_i = ψ_j) contribute nothing.

    Args:
        policy_logps (`torch.Tensor`): `(B, K)` summed log-probs of each completion under the policy.
        ref_logps (`torch.Tensor`): `(B, K)` the same under the reference model.
        scores (`torch.Tensor`): `(B, K)` labels ψ, higher is better. |ψ| must be ≤ 64, since 2^ψ is used as a gain.
        mask (`torch.Tensor`): `(B, K)` bool, False at padded slots.
        beta (`float`): β > 0.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: `losses (B,)` and detached `s (B, K)`, 0 at padded slots.
    """
    _check_positive("beta", beta)
    mask = _check_inputs(mask, policy_logps=policy_logps, ref_logps=ref_logps, scores=scores)
    K = mask.shape[-1]

    psi = torch.where(mask, scores.detach().float(), 0.0)  # (B, K)
    if bool((psi.abs() > _LIPO_MAX_ABS_SCORE).any()):
        raise ValueError(
            f"lipo_lambda_loss uses the gain 2**score, so valid scores must lie in [-{_LIPO_MAX_ABS_SCORE:g}, "
            f"{_LIPO_MAX_ABS_SCORE:g}]; got max |score| = {psi.abs().max().item():g}. Rescale the scores (e.g. "
            "to ratings in [0, 10]) first."
        )

    s = beta * (policy_logps.float() - ref_logps.float())  # (B, K)
    s = torch.where(mask, s, 0.0)  # (B, K)

    with torch.no_grad():
        idx = torch.arange(K, device=mask.device)
        s_i, s_j = s[:, :, None], s[:, None, :]  # (B, K, 1), (B, 1, K)
        ahead = (s_j > s_i) | ((s_j == s_i) & (idx[None, None, :] < idx[None, :, None]))  # (B, K, K) j before i
        tau = 1 + (ahead & mask[:, None, :]).sum(-1)  # (B, K) 1-based rank under the current s
        inv_discount = 1.0 / torch.log2(1.0 + tau.float())  # (B, K) 1/D(τ)
        gain = torch.exp2(psi) - 1.0  # (B, K) G = 2^ψ − 1
        delta = (gain[:, :, None] - gain[:, None, :]).abs() * (
            inv_discount[:, :, None] - inv_discount[:, None, :]
        ).abs()  # (B, K, K) Δ_ij
        pairs = (psi[:, :, None] > psi[:, None, :]) & mask[:, :, None] & mask[:, None, :]  # (B, K, K) ψ_i > ψ_j

    logistic = F.softplus(-(s[:, :, None] - s[:, None, :]))  # (B, K, K) log(1 + exp(−(s_i − s_j)))
    pair_losses = torch.where(pairs, delta * logistic, 0.0)  # (B, K, K)
    losses = pair_losses.sum(dim=(-2, -1))  # (B,)
    return losses, s.detach()


def _check_pro_reward_gaps(r: torch.Tensor, mask: torch.Tensor, temperature: float) -> None:
    """Raise ``ValueError`` if a list's largest weight ``(max r − min r) / temperature`` over its valid items exceeds
    `_PRO_MAX_WEIGHT` or is not finite. `r`: `(B, K)` float32 rewards, `mask`: `(B, K)` bool."""
    big = torch.finfo(torch.float32).max
    with torch.no_grad():
        top = torch.where(mask, r, -big).amax(dim=-1)  # (B,) NaN propagates
        bottom = torch.where(mask, r, big).amin(dim=-1)  # (B,)
        gaps = torch.where(mask.sum(-1) >= 2, top - bottom, 0.0)  # (B,) r_1 − r_K, the largest w·temperature
        bad = ~(gaps / temperature <= _PRO_MAX_WEIGHT)  # (B,) also True for NaN / inf
        if not bool(bad.any()):
            return
        row = int(bad.nonzero()[0, 0])
        gap = gaps[row].item()
    raise ValueError(
        f"pro_loss with temperature_mode='reward_difference' multiplies log-probs by the reward gaps "
        f"(r_k − r_i) / temperature, which must be finite and at most {_PRO_MAX_WEIGHT:g}; batch row {row} has a "
        f"largest gap of {gap:g} (max score {top[row].item():g}, min score {bottom[row].item():g}, temperature "
        f"{temperature:g}), so the gradients would overflow. Rescale the scores (e.g. standardise them or map them "
        "to [0, 10]), raise `temperature`, or use temperature_mode='constant'."
    )


def pro_loss(
    policy_mean_logps: torch.Tensor,
    scores: torch.Tensor,
    mask: torch.Tensor,
    temperature_mode: str = "reward_difference",
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""PRO: Preference Ranking Optimization, the ranking term without the SFT term.

    Song et al. 2023, "Preference Ranking Optimization for Human Alignment" (arXiv 2306.17492), the PRO loss with
    the reward-difference temperatures:

        s_i   = mean token log-prob of completion i under the policy (no reference model)
        w_k^i = r_k − r_i  for i > k   (= 1 / T_k^i)
        w_k^k = max_{i>k} w_k^i          (= 1 / min_{i>k} T_k^i)
        ℓ_k   = log( exp(w_k^k s_k) + Σ_{i>k} exp(w_k^i s_i) ) − w_k^k s_k
        L     = Σ_{k=1..K−1} ℓ_k

    Here r are the sorted scores and "i > k" means i ranks after k in the stable order. The weights carry no
    gradient. A tied pair gets w = 0, so the tied completion adds a constant exp(0) = 1 to the denominator. A
    stage whose remaining completions are all tied with s_k contributes a constant log(1 + #remaining) with no
    gradient. Stages follow the stable order, so the loss is not symmetric in tied completions. `temperature`
    divides every weight, and 1.0 gives the paper's loss.

    `temperature_mode="constant"` uses w_k^i = w_k^k = 1/temperature for non-tied pairs and 0 for tied ones. With
    K = 2 it is −log σ((s_1 − s_2)/temperature).

    The SFT term (β · NLL of the top completion) is not part of this function; the trainer adds it.

    Differences from the authors' code (AlibabaResearch/DAMO-ConvAI, PRO/train/utils/process_manager.py,
    `compute_loss`):

    - They compute log(1e-10 + exp(·) + Σ exp(·)) without max-subtraction. Here it is a masked logsumexp, with no eps.
    - They take each stage's batch mean and sum over stages. That equals the batch mean of the per-prompt sums
      here only when every row has the same K; rows with padding are handled here by the mask.
    - Their `--temperature` flag is parsed but never used. Here it scales the weights, and 1.0 matches them.
    - Their SFT term is −Σ_t log π (summed, not length-normalised) on `sft_index` (always 0, the top completion),
      times `sft_weight · (K − 1)²`, with `sft_weight = 0.05` in their launch scripts. Their s_i is the summed
      response log-prob divided by the count of scored positions. Because of their shifted mask and pad = EOS,
      that count also includes one trailing EOS prediction for every sequence shorter than the longest in
      the batch.

    Args:
        policy_mean_logps (`torch.Tensor`): `(B, K)` mean token log-prob of each completion (computed by the caller).
        scores (`torch.Tensor`): `(B, K)` rewards r, higher is better. No gradient. With `"reward_difference"`,
            each list's largest gap (max r − min r over valid items) / temperature must be finite and ≤ 1e4
            (`_PRO_MAX_WEIGHT`), else `ValueError`: larger weights overflow the gradients.
        mask (`torch.Tensor`): `(B, K)` bool, False at padded slots.
        temperature_mode (`str`, *optional*, defaults to `"reward_difference"`): `"reward_difference"` or
            `"constant"`.
        temperature (`float`, *optional*, defaults to `1.0`): > 0; every weight is divided by it.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: `losses (B,)` and detached `s (B, K)`, 0 at padded slots.
    """
    if temperature_mode not in PRO_TEMPERATURE_MODES:
        raise ValueError(f"`temperature_mode` must be one of {PRO_TEMPERATURE_MODES}, got {temperature_mode!r}.")
    _check_positive("temperature", temperature)
    mask = _check_inputs(mask, policy_mean_logps=policy_mean_logps, scores=scores)

    s = torch.where(mask, policy_mean_logps.float(), 0.0)  # (B, K)
    sc = scores.detach()  # (B, K) compared exactly, in the caller's dtype
    r = torch.where(mask, sc.float(), 0.0)  # (B, K)

    if temperature_mode == "reward_difference":
        _check_pro_reward_gaps(r, mask, temperature)

    after = _ranks_after(sc, mask)  # (B, K, K) i at or after k
    after = after & ~torch.eye(mask.shape[-1], dtype=torch.bool, device=mask.device)  # (B, K, K) strictly after
    if temperature_mode == "reward_difference":
        weights = (r[:, :, None] - r[:, None, :]) / temperature  # (B, K, K) w_k^i = r_k − r_i
    else:
        weights = (sc[:, :, None] != sc[:, None, :]).float() / temperature  # (B, K, K) 1/T, 0 if tied
    weights = torch.where(after, weights, 0.0)  # (B, K, K) >= 0
    pos_weight = weights.max(dim=-1).values  # (B, K) w_k^k = max_{i>k} w_k^i
    has_stage = after.any(dim=-1)  # (B, K) valid k with at least one completion after it

    pos_logit = pos_weight * s  # (B, K) w_k^k s_k
    neg_logits = torch.where(after, weights * s[:, None, :], _NEG_FILL)  # (B, K, K) w_k^i s_i
    logits = torch.cat([pos_logit[:, :, None], neg_logits], dim=-1)  # (B, K, K + 1)
    stage_losses = torch.logsumexp(logits, dim=-1) - pos_logit  # (B, K) ℓ_k
    stage_losses = torch.where(has_stage, stage_losses, 0.0)  # (B, K)
    losses = stage_losses.sum(-1)  # (B,)
    return losses, s.detach()


def _strictly_better_pairs(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`better[b, i, j]`: valid i scored strictly higher than valid j. Tied pairs are never in it. `(B, K, K)`."""
    sc = scores.detach().float()
    return (sc[:, :, None] > sc[:, None, :]) & mask[:, :, None] & mask[:, None, :]


def rrhf_loss(
    policy_logps: torch.Tensor,
    completion_lengths: torch.Tensor,
    scores: torch.Tensor,
    mask: torch.Tensor,
    length_penalty: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""RRHF's ranking term (Yuan et al. 2023, "RRHF: Rank Responses to Align Language Models with Human Feedback").

    Eq. (1)–(2) of the paper, as in the authors' `train.py` (`get_score`, `rrhf_loss`):

        p_i = Σ_t log π(y_{i,t}) / |y_i|^length_penalty
        L   = Σ_{r_i < r_j} max(0, p_i − p_j)

    per prompt, over valid pairs; tied pairs contribute nothing. The SFT term on the best completion and the
    `rrhf_weight` are the trainer's.

    Args:
        policy_logps (`torch.Tensor`): `(B, K)` summed completion log-probs under the policy.
        completion_lengths (`torch.Tensor`): `(B, K)` completion token counts |y_i| (clamped to >= 1).
        scores (`torch.Tensor`): `(B, K)` rewards r, higher is better. No gradient.
        mask (`torch.Tensor`): `(B, K)` bool, False at padded slots.
        length_penalty (`float`, *optional*, defaults to `1.0`): exponent of the length normalisation.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: `losses (B,)` and detached `p (B, K)`, 0 at padded slots.
    """
    mask = _check_inputs(mask, policy_logps=policy_logps, completion_lengths=completion_lengths, scores=scores)
    lengths = torch.where(mask, completion_lengths.float(), 1.0).clamp(min=1.0)
    p = torch.where(mask, policy_logps.float(), 0.0) / lengths**length_penalty  # (B, K)
    better = _strictly_better_pairs(scores, mask)  # (B, K, K) r_j > r_i at [b, j, i]
    hinge = torch.relu(p[:, None, :] - p[:, :, None])  # (B, K, K) [b, j, i] = max(0, p_i − p_j)
    losses = torch.where(better, hinge, 0.0).sum(dim=(1, 2))  # (B,)
    return losses, torch.where(mask, p, 0.0).detach()


def slic_hf_loss(
    policy_logps: torch.Tensor,
    scores: torch.Tensor,
    mask: torch.Tensor,
    margin: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""SLiC-HF's rank-calibration term (Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human
    Feedback", Eq. (2)), extended from pairs to lists:

        L = mean_{r_i > r_j} max(0, margin − log π(y_i) + log π(y_j))

    per prompt, over its ordered (strictly better, worse) valid pairs, with summed token log-probs and no reference
    model. A list without an ordered pair (K < 2 valid, or all tied) gets 0. The trainer adds the regularisation
    term (NLL of the top-ranked completion).

    Args:
        policy_logps (`torch.Tensor`): `(B, K)` summed completion log-probs under the policy.
        scores (`torch.Tensor`): `(B, K)` rewards, higher is better. No gradient.
        mask (`torch.Tensor`): `(B, K)` bool, False at padded slots.
        margin (`float`, *optional*, defaults to `1.0`): the hinge margin δ.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: `losses (B,)` and detached log-probs `(B, K)`, 0 at padded slots.
    """
    mask = _check_inputs(mask, policy_logps=policy_logps, scores=scores)
    logps = torch.where(mask, policy_logps.float(), 0.0)  # (B, K)
    better = _strictly_better_pairs(scores, mask)  # (B, K, K) r_i > r_j at [b, i, j]
    hinge = torch.relu(margin - logps[:, :, None] + logps[:, None, :])  # (B, K, K)
    num_pairs = better.sum(dim=(1, 2))  # (B,)
    losses = torch.where(better, hinge, 0.0).sum(dim=(1, 2)) / num_pairs.clamp(min=1)  # (B,)
    return losses, logps.detach()
