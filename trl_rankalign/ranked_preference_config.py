"""Options shared by the listwise configs (`RankDPOConfig`, `PROConfig`, `RRHFConfig`, `SLiCConfig`)."""

from dataclasses import field

from trl import DPOConfig


def shared_prompt_field():
    """The `shared_prompt_forward` field: encode each prompt once for its K completions (see `shared_prompt.py`)."""
    return field(
        default=None,
        metadata={
            "help": "Encode each prompt once for its K completions (one packed row with a block attention mask). "
            "None (auto): on when packing removes at least half of the tokens (long prompts, short completions)."
        },
    )


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
