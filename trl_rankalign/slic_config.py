from dataclasses import dataclass, field

from trl import DPOConfig

from .listwise_options import reject_pairwise_only_options, shared_prompt_field


@dataclass
class SLiCConfig(DPOConfig):
    r"""
    Configuration for [`SLiCTrainer`] (SLiC-HF, Zhao et al. 2023), reference-free: `beta` and
    `precompute_ref_log_probs` have no effect (the latter is rejected); TRL's pairwise-only options are rejected.

    Parameters:
        margin (`float`, *optional*, defaults to `1.0`):
            Hinge margin δ of the rank-calibration loss max(0, δ − log π(y⁺) + log π(y⁻)) (the paper's δ = 1).
        sft_weight (`float`, *optional*, defaults to `0.1`):
            Weight λ of the regularisation term, the token-mean NLL of the top-ranked completions (the paper's
            cross-entropy regulariser towards the SFT targets; its best value in the paper's sweeps was small).
        shared_prompt_forward (`bool`, *optional*):
            Encode each prompt once for its K completions: one packed row, a block attention mask and per-completion
            position ids (exact same log-probs). `None` (auto) turns it on when it removes at least half of the
            tokens, as with TL;DR-like long prompts and short completions, where it measured 2.3x faster.
    """

    margin: float = field(default=1.0, metadata={"help": "Hinge margin of the calibration loss."})
    sft_weight: float = field(default=0.1, metadata={"help": "Weight of the NLL term on the top completion."})

    shared_prompt_forward: bool | None = shared_prompt_field()

    def __post_init__(self):
        super().__post_init__()
        if self.sft_weight < 0:
            raise ValueError(f"sft_weight must be >= 0, got {self.sft_weight}")
        if self.precompute_ref_log_probs:
            raise ValueError("SLiC-HF is reference-free: precompute_ref_log_probs must be False.")
        reject_pairwise_only_options(self, "SLiCTrainer")
