from dataclasses import dataclass, field
from typing import ClassVar

from .ranked_preference_config import RankedPreferenceConfig


@dataclass
class RRHFConfig(RankedPreferenceConfig):
    r"""
    Configuration for [`RRHFTrainer`] (Yuan et al. 2023): [`RankedPreferenceConfig`] plus the fields below.
    Reference-free: `beta` has no effect and no reference model is loaded.

    Parameters:
        rrhf_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the ranking term; the loss is `rrhf_weight * ranking + NLL_top`. The authors' `train.py`
            defaults to `rrhf_weight=100` with batch size 1, a ranking term summed over pairs and an SFT term divided
            by the padded length; here the ranking term is averaged over prompts and the NLL is a token mean, so
            their 100 is not directly comparable: start from 1 and sweep.
        length_penalty (`float`, *optional*, defaults to `1.0`):
            Exponent of the length normalisation p_i = Σ_t log π(y_{i,t}) / |y_i|^length_penalty (the authors' default).
    """

    trainer_name: ClassVar[str] = "RRHFTrainer"
    reference_free: ClassVar[bool] = True

    rrhf_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight (>= 0) of the ranking hinge term in rrhf_weight * ranking + NLL_top. Default 1: the "
            "authors' 100 assumed a summed ranking term and a length-divided NLL, so start from 1 here "
            "and sweep."
        },
    )
    length_penalty: float = field(
        default=1.0,
        metadata={
            "help": "Exponent of the length normalisation p_i = sum of token log-probs / length**length_penalty "
            "(0: summed, 1: mean token log-prob, the authors' default)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.rrhf_weight < 0:
            raise ValueError(f"rrhf_weight must be >= 0, got {self.rrhf_weight}")
