from dataclasses import dataclass, field

from trl import DPOConfig

from .listwise_options import reject_pairwise_only_options, shared_prompt_field


@dataclass
class RRHFConfig(DPOConfig):
    r"""
    Configuration for [`RRHFTrainer`] (Yuan et al. 2023), reference-free: `beta` and `precompute_ref_log_probs` have
    no effect (the latter is rejected); TRL's pairwise-only options are rejected.

    Parameters:
        rrhf_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the ranking term; the loss is `rrhf_weight * ranking + NLL_top`. The authors' `train.py`
            defaults to `rrhf_weight=100` with batch size 1, a ranking term summed over pairs and an SFT term divided
            by the padded length; here the ranking term is averaged over prompts and the NLL is a token mean, so
            their 100 is not directly comparable: start from 1 and sweep.
        length_penalty (`float`, *optional*, defaults to `1.0`):
            Exponent of the length normalisation p_i = Σ_t log π(y_{i,t}) / |y_i|^length_penalty (the authors' default).
        shared_prompt_forward (`bool`, *optional*):
            Encode each prompt once for its K completions: one packed row, a block attention mask and per-completion
            position ids (exact same log-probs). `None` (auto) turns it on when it removes at least half of the
            tokens, as with TL;DR-like long prompts and short completions, where it measured 2.3x faster.
    """

    rrhf_weight: float = field(default=1.0, metadata={"help": "Weight of the RRHF ranking term."})
    length_penalty: float = field(default=1.0, metadata={"help": "Length-normalisation exponent of the scores."})

    shared_prompt_forward: bool | None = shared_prompt_field()

    def __post_init__(self):
        super().__post_init__()
        if self.rrhf_weight < 0:
            raise ValueError(f"rrhf_weight must be >= 0, got {self.rrhf_weight}")
        if self.precompute_ref_log_probs:
            raise ValueError("RRHF is reference-free: precompute_ref_log_probs must be False.")
        reject_pairwise_only_options(self, "RRHFTrainer")
