from dataclasses import dataclass, field
from typing import ClassVar

from .ranked_preference_config import RankedPreferenceConfig


@dataclass
class SLiCConfig(RankedPreferenceConfig):
    r"""
    Configuration for [`SLiCTrainer`] (SLiC-HF, Zhao et al. 2023): [`RankedPreferenceConfig`] plus the fields below.
    Reference-free: `beta` has no effect and no reference model is loaded.

    Parameters:
        margin (`float`, *optional*, defaults to `1.0`):
            Hinge margin δ of the rank-calibration loss max(0, δ − log π(y⁺) + log π(y⁻)) (the paper's δ = 1).
        sft_weight (`float`, *optional*, defaults to `0.1`):
            Weight λ of the regularisation term, the token-mean NLL of the top-ranked completions (the paper's
            cross-entropy regulariser towards the SFT targets; its best value in the paper's sweeps was small).
    """

    trainer_name: ClassVar[str] = "SLiCTrainer"
    reference_free: ClassVar[bool] = True

    margin: float = field(
        default=1.0,
        metadata={
            "help": "Hinge margin delta in max(0, delta - log p(better) + log p(worse)), in nats of summed "
            "log-probs; default 1.0 is the SLiC-HF paper's."
        },
    )
    sft_weight: float = field(
        default=0.1,
        metadata={
            "help": "Weight lambda (>= 0) of the regulariser, the token-mean NLL of each list's top completion, "
            "which keeps the policy near the SFT targets. Default 0.1: small, as in the paper's best "
            "runs; 0 turns it off."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.sft_weight < 0:
            raise ValueError(f"sft_weight must be >= 0, got {self.sft_weight}")
