from dataclasses import dataclass, field

from trl import DPOConfig


RANK_LOSSES = ("plackett_luce", "lipo")
TIE_POLICIES = ("efron", "breslow", "ordered")


def reject_pairwise_only_options(config: DPOConfig, trainer_name: str) -> None:
    """Fail loudly on `DPOConfig` options that only make sense for TRL's pairwise losses."""
    if list(config.loss_type) != ["sigmoid"]:
        raise ValueError(
            f"{trainer_name} computes its own listwise loss, so `loss_type` must stay at its default ['sigmoid'], got "
            f"{config.loss_type}. Select the listwise loss with the trainer's own fields instead."
        )
    unsupported = {
        "use_weighting": config.use_weighting,
        "ld_alpha": config.ld_alpha is not None,
        "f_divergence_type": config.f_divergence_type != "reverse_kl",
        "label_smoothing": config.label_smoothing != 0.0,
        "loss_weights": config.loss_weights is not None,
        "sync_ref_model": config.sync_ref_model,
    }
    enabled = [name for name, on in unsupported.items() if on]
    if enabled:
        raise ValueError(f"{trainer_name} does not support these pairwise-DPO options: {enabled}. Unset them.")


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
    """

    rank_loss: str = field(
        default="plackett_luce",
        metadata={"help": "Listwise loss.", "choices": list(RANK_LOSSES)},
    )
    ties: str = field(
        default="efron",
        metadata={"help": "Tie policy of the Plackett–Luce loss.", "choices": list(TIE_POLICIES)},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.rank_loss not in RANK_LOSSES:
            raise ValueError(f"rank_loss must be one of {RANK_LOSSES}, got {self.rank_loss!r}")
        if self.ties not in TIE_POLICIES:
            raise ValueError(f"ties must be one of {TIE_POLICIES}, got {self.ties!r}")
        reject_pairwise_only_options(self, "RankDPOTrainer")
