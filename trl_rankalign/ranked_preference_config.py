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
    is refused by the trainer and `beta` has no effect (see `precompute_ref_log_probs` below for how no reference copy
    is loaded).

    Reference log-probs given with the data win: a `ref_logps` column (K floats per row, in the row's completion
    order) is used as is, with `precompute_ref_log_probs` on or off, and nothing is precomputed for a dataset that has
    one; without it, the reference log-probs are precomputed (`precompute_ref_log_probs=True`) or computed live.

    Parameters:
        precompute_ref_log_probs (`bool`, *optional*):
            As in `DPOConfig`: precompute the reference log-probs once, before training, and hold no reference model.
            `None` (default) resolves to `False` (TRL's default) for losses with a reference and to `True` for
            reference-free ones: that is `DPOTrainer`'s public switch for loading no reference copy (nothing is
            computed). A reference-free trainer accepts `False` only with PEFT (then DPOTrainer holds no reference
            copy either, and does not hash the model) and refuses it otherwise, since DPOTrainer would load a full
            reference copy. Under FSDP without PEFT, TRL 1.16's `DPOTrainer` loads a reference copy while precomputing
            whatever this says (it frees it afterwards); the trainer warns.
        shared_prompt_forward (`bool`, *optional*):
            Encode each prompt once for its K completions: one packed row per prompt, its completions attending to the
            prompt's keys/values through a registered attention function (the same log-probs as K separate rows).
            `None` (auto) turns it on when it removes at least 10% of the tokens and the model can run it exactly.
    """

    reference_free: ClassVar[bool] = False
    trainer_name: ClassVar[str] = "RankedPreferenceTrainer"  # for error messages

    precompute_ref_log_probs: bool | None = field(
        default=None,
        metadata={
            "help": "Precompute the reference log-probs before training and hold no reference model. None: False, "
            "or True for reference-free losses (which then load no reference copy)."
        },
    )
    shared_prompt_forward: bool | None = field(
        default=None,
        metadata={
            "help": "Encode each prompt once for its K completions (one packed row, the completions attending to the "
            "prompt). None (auto): on when packing removes at least a tenth of the tokens and the model can run it exactly."
        },
    )

    def __post_init__(self):
        if self.precompute_ref_log_probs is None:
            self.precompute_ref_log_probs = self.reference_free
        super().__post_init__()
        self._reject_pairwise_only_options()

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
