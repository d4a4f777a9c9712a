"""The sampling settings every online method shares, as one dataclass mixin: [`SamplingArguments`].

RAFT (`RAFTConfig`), `iterate` (`IterativeConfig`) and RSO's sampling step (`RSOConfig`) mix it in, so they take the
same fields with the same names and meaning, and [`SamplingArguments.decoding`] turns them into the decoding keyword
arguments of [`trl_rankalign.sampling.generation.sample_and_score`]. [`RoundArguments`] adds what only the round-based
methods need (the reward, and how a served policy follows the rounds).
"""

from dataclasses import dataclass, field

from ..sampling.arguments import GenerationArguments, check_generation_arguments
from ..sampling.generation import Decoding


__all__ = ["POLICY_UPDATES", "RoundArguments", "SamplingArguments"]

POLICY_UPDATES = ("none", "reload", "sglang", "lora", "nccl")


@dataclass
class SamplingArguments(GenerationArguments):
    r"""
    How completions are sampled: the generation backend ([`~trl_rankalign.sampling.arguments.GenerationArguments`]) and
    the decoding settings.

    Parameters:
        sampling_temperature (`float`, *optional*, defaults to `1.0`): temperature of the sampling (0: greedy).
        sampling_top_k (`int`, *optional*, defaults to `0`): top-k of the sampling (0 = off).
        sampling_top_p (`float`, *optional*, defaults to `1.0`): top-p of the sampling (1.0 = off).
        max_new_tokens (`int`, *optional*, defaults to `64`): length limit of each sampled completion.
        sampling_batch_size (`int`, *optional*, defaults to `8`): prompts per sampling batch (and per append to the
            resumable cache).
        sampling_seed (`int`, *optional*, defaults to `0`): seed of the sampling.
    """

    sampling_temperature: float = field(
        default=1.0,
        metadata={
            "help": "Sampling temperature (>= 0; 0 is greedy). Default 1.0: the policy's own distribution, which "
            "online methods need to explore."
        },
    )
    sampling_top_k: int = field(
        default=0,
        metadata={
            "help": "Top-k of the sampling (0: off, the default, so the policy's full distribution is sampled)."
        },
    )
    sampling_top_p: float = field(
        default=1.0, metadata={"help": "Top-p (nucleus) of the sampling, in (0, 1] (1.0: off, the default)."}
    )
    max_new_tokens: int = field(
        default=64,
        metadata={
            "help": "Length limit of each sampled completion, in tokens. Default 64 suits short answers; raise it "
            "for long ones (sampling time grows with it)."
        },
    )
    sampling_batch_size: int = field(
        default=8,
        metadata={
            "help": "Prompts per sampling batch and per append to the resumable cache (>= 1). With the server "
            "backend, set it to at least generation_concurrency: a batch's prompts are the requests in "
            "flight."
        },
    )
    sampling_seed: int | None = field(
        default=0,
        metadata={
            "help": "Seed of the sampling (batch b of round r is seeded sampling_seed + 1000 * r + b), so a rerun "
            "draws the same samples."
        },
    )

    def decoding(self) -> dict:
        """The decoding keyword arguments of `sample_and_score` / `sample_completions` (the seed is per call)."""
        return dict(
            temperature=self.sampling_temperature,
            top_k=self.sampling_top_k,
            top_p=self.sampling_top_p,
            max_new_tokens=self.max_new_tokens,
        )

    def check_sampling_arguments(self) -> None:
        """Validate the backend and decoding fields (called by the configs' `__post_init__`)."""
        check_generation_arguments(self)
        Decoding(**self.decoding())  # the same checks every backend applies
        if isinstance(self.sampling_batch_size, bool) or self.sampling_batch_size < 1:
            raise ValueError(f"`sampling_batch_size` must be a positive integer, got {self.sampling_batch_size!r}.")


@dataclass
class RoundArguments(SamplingArguments):
    r"""
    [`SamplingArguments`] plus what the round-based methods (RAFT, `iterate`) share.

    Parameters:
        reward_model_path (`str`, *optional*): a sequence-classification reward model.
        reward_function (`str`, *optional*): a reward callable `"module:function"` with TRL's reward-function
            signature `(prompts, completions, **kwargs) -> rewards` (a recipe's alternative to `reward_model_path`).
        policy_update (`str`, *optional*, defaults to `"none"`): with `generation_backend="server"`, how the served
            policy follows the rounds: `"reload"` (the round's checkpoint is saved and requested by its path: servers
            that load the model a request names, as `transformers serve` does), `"sglang"` (SGLang's
            `/update_weights_from_disk` with the round's checkpoint), `"lora"` (vLLM's runtime LoRA loading: the
            round's adapter under a new name; needs `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` and a PEFT run), `"nccl"`
            (full weights pushed over NCCL by TRL's `VLLMGeneration` weight sync to `vllm serve
            --weight-transfer-config '{"backend": "nccl"}'`; CUDA and vLLM on the trainer's side). Each
            update is verified against what the server reports before the next round samples. `"none"`: the server
            serves fixed weights, so only one round is accepted.
    """

    reward_model_path: str | None = field(
        default=None,
        metadata={
            "help": "Path or hub id of a sequence-classification reward model that scores the samples (set this "
            "or reward_function)."
        },
    )
    reward_function: str | None = field(
        default=None,
        metadata={
            "help": "Python reward as an import string 'module:function' with TRL's reward-function signature "
            "(prompts, completions, **kwargs) -> list of floats; a recipe's alternative to "
            "reward_model_path."
        },
    )
    policy_update: str = field(
        default="none",
        metadata={
            "help": "server backend: how the served policy follows the rounds: none (fixed weights, one round "
            "only), reload (the round's checkpoint requested by path, as transformers serve loads it), "
            "sglang (update_weights_from_disk), lora (vLLM runtime LoRA loading) or nccl (full weights pushed "
            "by TRL's vLLM weight sync; CUDA). Each update is verified before the next round samples.",
            "choices": list(POLICY_UPDATES),
        },
    )

    def check_round_arguments(self, num_rounds: int) -> None:
        self.check_sampling_arguments()
        if isinstance(self.sampling_seed, bool) or not isinstance(self.sampling_seed, int):
            raise ValueError(
                f"sampling_seed must be an integer (round r's batch b is seeded sampling_seed + 1000 * r + b), got "
                f"{self.sampling_seed!r}."
            )
        if self.policy_update not in POLICY_UPDATES:
            raise ValueError(f"policy_update must be one of {POLICY_UPDATES}, got {self.policy_update!r}.")
        if self.policy_update != "none" and self.generation_backend != "server":
            raise ValueError(
                f"policy_update={self.policy_update!r} updates a served policy: use generation_backend=server."
            )
        if self.generation_backend == "server" and num_rounds > 1 and self.policy_update == "none":
            raise ValueError(
                "generation_backend=server samples from fixed served weights, so it works for num_rounds=1 only, "
                "unless the server follows the rounds: set policy_update (reload, sglang, lora or nccl), or use "
                "transformers or vllm for num_rounds > 1."
            )
