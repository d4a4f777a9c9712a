from dataclasses import dataclass, field

from trl import DPOConfig

from .listwise_options import reject_pairwise_only_options, shared_prompt_field


RANK_LOSSES = ("plackett_luce", "lipo")
TIE_POLICIES = ("efron", "breslow", "ordered")


@dataclass
class RankDPOConfig(DPOConfig):
    r"""
    Configuration for [`RankDPOTrainer`]: listwise DPO over K ranked completions per prompt.

    Extends [`~trl.DPOConfig`] with only the listwise fields below; everything else (β, reference model handling,
    `precompute_ref_log_probs`, `max_length`, PEFT, logging) means what it means in TRL. TRL's pairwise-only options
    (`loss_type` other than the default, `use_weighting`, `ld_alpha`, `f_divergence_type`, `label_smoothing`,
    `sync_ref_model`) are rejected.

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
        shared_prompt_forward (`bool`, *optional*):
            Encode each prompt once for its K completions: one packed row, a block attention mask and per-completion
            position ids (exact same log-probs). `None` (auto) turns it on when it removes at least half of the
            tokens, as with TL;DR-like long prompts and short completions, where it measured 2.3x faster.
    """

    rank_loss: str = field(
        default="plackett_luce",
        metadata={"help": "Listwise loss.", "choices": list(RANK_LOSSES)},
    )
    ties: str = field(
        default="efron",
        metadata={"help": "Tie policy of the Plackett–Luce loss.", "choices": list(TIE_POLICIES)},
    )

    shared_prompt_forward: bool | None = shared_prompt_field()

    def __post_init__(self):
        super().__post_init__()
        if self.rank_loss not in RANK_LOSSES:
            raise ValueError(f"rank_loss must be one of {RANK_LOSSES}, got {self.rank_loss!r}")
        if self.ties not in TIE_POLICIES:
            raise ValueError(f"ties must be one of {TIE_POLICIES}, got {self.ties!r}")
        reject_pairwise_only_options(self, "RankDPOTrainer")
