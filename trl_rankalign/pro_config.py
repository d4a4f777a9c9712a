from dataclasses import dataclass, field
from typing import ClassVar

from .ranked_preference_config import RankedPreferenceConfig


TEMPERATURE_MODES = ("reward_difference", "constant")


@dataclass
class PROConfig(RankedPreferenceConfig):
    r"""
    Configuration for [`PROTrainer`]: Preference Ranking Optimization (Song et al. 2023), reference-free.

    Extends [`RankedPreferenceConfig`] (a [`~trl.DPOConfig`]) with only the fields below. PRO is reference-free:
    `beta` has no effect and no reference model is loaded (see `RankedPreferenceConfig.reference_free`).

    Parameters:
        sft_weight (`float`, *optional*, defaults to `0.05`):
            Weight β of the SFT term (token-mean NLL of the batch's top-ranked completions, as TRL's `sft` loss
            type). The paper adds β·L_SFT to the ranking loss; the authors' launch scripts pass 0.05 and their code
            multiplies it by (K−1)², so their effective weight is 0.05·(K−1)² (see `scale_sft_weight_by_k`). Their
            NLL sums token log-probs where this one averages them, so the same number weighs the SFT term less here
            by about the completion length.
        scale_sft_weight_by_k (`bool`, *optional*, defaults to `True`):
            Multiply `sft_weight` by (K−1)², as the authors' code does; K is the training data's longest list (the
            same for every batch and process; the batch's longest list for an `IterableDataset`).
        temperature_mode (`str`, *optional*, defaults to `"reward_difference"`):
            `"reward_difference"`: the paper's weights w_{k,i} = r_k − r_i (a dynamic temperature). `"constant"`:
            w ≡ 1/`temperature` for every non-tied pair.
        temperature (`float`, *optional*, defaults to `1.0`):
            τ of the constant mode; in the reward-difference mode every weight is divided by it (1.0 is the paper).
    """

    trainer_name: ClassVar[str] = "PROTrainer"
    reference_free: ClassVar[bool] = True

    sft_weight: float = field(
        default=0.05,
        metadata={
            "help": "Weight (>= 0) of the SFT term, the token-mean NLL of each list's top completion, added to "
            "the ranking loss. Default 0.05, as the PRO authors' launch scripts pass; 0 turns the SFT "
            "term off."
        },
    )
    scale_sft_weight_by_k: bool = field(
        default=True,
        metadata={
            "help": "Multiply sft_weight by (K-1)^2, K the data's longest list, as the PRO authors' code does "
            "(default True, to match it); False uses sft_weight as given."
        },
    )
    temperature_mode: str = field(
        default="reward_difference",
        metadata={
            "help": "Weights of the ranking terms: reward_difference (the paper's w = r_k - r_i, so larger reward "
            "gaps weigh more) or constant (w = 1/temperature for every non-tied pair).",
            "choices": list(TEMPERATURE_MODES),
        },
    )
    temperature: float = field(
        default=1.0,
        metadata={
            "help": "Temperature tau (> 0): the constant mode's w = 1/tau; in the reward_difference mode every "
            "weight is divided by it. Default 1.0 is the paper; raise it when large score gaps make a "
            "list's weights exceed 1e4 (refused)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.temperature_mode not in TEMPERATURE_MODES:
            raise ValueError(f"temperature_mode must be one of {TEMPERATURE_MODES}, got {self.temperature_mode!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.sft_weight < 0:
            raise ValueError(f"sft_weight must be >= 0, got {self.sft_weight}")
