"""`RankedPreferenceConfig`: what every listwise config (`RankDPOConfig`, `PROConfig`, `RRHFConfig`, `SLiCConfig`)
shares on top of TRL's `DPOConfig`."""

from dataclasses import dataclass, field
from typing import ClassVar

from trl import DPOConfig


@dataclass
class RankedPreferenceConfig(DPOConfig):
    r"""
    Base configuration of the listwise trainers: [`~trl.DPOConfig`] plus the shared-prompt forward, with TRL's
    pairwise-only options refused and the rules of reference-free losses applied.

    Every `DPOConfig` field means what it means in TRL (β, `max_length`, `truncation_mode`, `precompute_ref_log_probs`,
    PEFT, logging, ...). These pairwise-only options raise an error rather than being silently ignored: `loss_type`
    other than its default, `use_weighting`, `ld_alpha`, `f_divergence_type`, `label_smoothing`, `loss_weights`,
    `sync_ref_model`.

    A subclass whose loss uses no reference model sets the class attribute `reference_free = True`. Then `ref_model`
    is refused by the trainer and `precompute_ref_log_probs` is set to `True`: that is `DPOTrainer`'s public switch
    for holding no reference model (nothing is computed: the trainer's precompute step returns the data unchanged).
    `beta` has no effect there.

    Parameters:
        shared_prompt_forward (`bool`, *optional*):
            Encode each prompt once for its K completions: one packed row per prompt, its completions attending to the
            prompt's keys/values through a registered attention function (the same log-probs as K separate rows).
            `None` (auto) turns it on when it removes at least 10% of the tokens and the model can run it exactly.
    """

    reference_free: ClassVar[bool] = False
    trainer_name: ClassVar[str] = "RankedPreferenceTrainer"  # for error messages

    shared_prompt_forward: bool | None = field(
        default=None,
        metadata={
            "help": "Encode each prompt once for its K completions (one packed row, the completions attending to the "
            "prompt). None (auto): on when packing removes at least a tenth of the tokens and the model can run it exactly."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self._reject_pairwise_only_options()
        if self.reference_free:
            self.precompute_ref_log_probs = True

    def _reject_pairwise_only_options(self) -> None:
        if list(self.loss_type) != ["sigmoid"]:
            raise ValueError(
                f"{self.trainer_name} computes its own listwise loss, so `loss_type` must stay at its default "
                f"['sigmoid'], got {self.loss_type}. Select the listwise loss with the trainer's own fields instead."
            )
        unsupported = {
            "use_weighting": self.use_weighting,
            "ld_alpha": self.ld_alpha is not None,
            "f_divergence_type": self.f_divergence_type != "reverse_kl",
            "label_smoothing": self.label_smoothing != 0.0,
            "loss_weights": self.loss_weights is not None,
            "sync_ref_model": self.sync_ref_model,
        }
        enabled = [name for name, on in unsupported.items() if on]
        if enabled:
            raise ValueError(
                f"{self.trainer_name} does not support these pairwise-DPO options: {enabled}. Unset them."
            )
