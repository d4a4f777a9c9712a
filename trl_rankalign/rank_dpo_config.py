from dataclasses import dataclass, field
from typing import ClassVar

from .ranked_preference_config import RankedPreferenceConfig


RANK_LOSSES = ("plackett_luce", "lipo")
TIE_POLICIES = ("efron", "breslow", "ordered")


@dataclass
class RankDPOConfig(RankedPreferenceConfig):
    r"""
    Configuration for [`RankDPOTrainer`]: listwise DPO over K ranked completions per prompt.

    Extends [`RankedPreferenceConfig`] (a [`~trl.DPOConfig`]) with only the listwise fields below; everything else
    (β, reference model handling, `precompute_ref_log_probs`, `max_length`, PEFT, logging, `shared_prompt_forward`)
    means what it means there. TRL's pairwise-only options are rejected.

    Parameters:
        rank_loss (`str`, *optional*, defaults to `"plackett_luce"`):
            `"plackett_luce"`: the DPO reward reparameterisation in a Plackett–Luce model of the ranking (DPO paper,
            App. A.3); with K=2 and no ties it equals TRL's sigmoid DPO. `"lipo"`: LiPO-λ (Liu et al. 2024), pairwise
            logistic terms weighted by their λ (NDCG) gain.
        ties (`str`, *optional*, defaults to `"efron"`):
            How the Plackett–Luce loss treats completions with equal scores. `"efron"` (default): Efron's
            approximation of the tied-rank likelihood, which equals plain Plackett–Luce without ties and never orders
            tied completions. `"breslow"`: Breslow's cruder approximation, also order-free. `"ordered"`: break ties by
            the dataset order (imposes an arbitrary order). LiPO ignores tied pairs whatever this says.
    """

    trainer_name: ClassVar[str] = "RankDPOTrainer"

    rank_loss: str = field(
        default="plackett_luce",
        metadata={
            "help": "Listwise loss on the implicit rewards: plackett_luce (the DPO paper's listwise form; equals "
            "TRL's sigmoid DPO for K=2 without ties, hence the default) or lipo (LiPO-lambda: pairwise "
            "logistic terms weighted by their NDCG gain).",
            "choices": list(RANK_LOSSES),
        },
    )
    ties: str = field(
        default="efron",
        metadata={
            "help": "How the Plackett-Luce loss treats equal scores: efron (default: equals plain Plackett-Luce "
            "without ties and never orders tied completions, right for integer ratings), breslow (cruder, "
            "also order-free) or ordered (ties broken by dataset order). LiPO skips tied pairs whatever "
            "this says.",
            "choices": list(TIE_POLICIES),
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.rank_loss not in RANK_LOSSES:
            raise ValueError(f"rank_loss must be one of {RANK_LOSSES}, got {self.rank_loss!r}")
        if self.ties not in TIE_POLICIES:
            raise ValueError(f"ties must be one of {TIE_POLICIES}, got {self.ties!r}")
