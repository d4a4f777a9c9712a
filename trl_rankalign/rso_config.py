"""Configuration of `RSOSampler`: statistical rejection sampling (RSO) on top of TRL's `DPOConfig`."""

import math
import os
from dataclasses import dataclass, field

from trl import DPOConfig

from .online.settings import SamplingArguments


RSO_PAIRINGS = ("first_round", "tournament")
RSO_LOSS_TYPES = ("sigmoid", "hinge")


@dataclass
class RSOConfig(SamplingArguments, DPOConfig):  # mixin first: its fields go last, `output_dir` stays first
    r"""
    Configuration for [`RSOSampler`]: DPO on preference pairs drawn by statistical rejection sampling (Liu et al. 2023,
    [arXiv:2309.06657](https://huggingface.co/papers/2309.06657)).

    Extends [`~trl.DPOConfig`] with only the sampling fields below: the online methods' shared sampling settings
    ([`~trl_rankalign.online.settings.SamplingArguments`]: `generation_backend` `"transformers"`, `"server"` or
    `"vllm"`, the server's / vLLM's options, and the decoding fields, whose defaults here are the paper's). Two βs are involved: `rso_beta` is the sampler's β
    of the target policy π_r(y|x) ∝ π_sft(y|x)·exp(r(x, y)/β) (the paper uses 0.5), while DPOConfig's `beta` is the
    loss's γ in σ(γΔ) / max(0, 1 − γΔ), whose default is changed here to the paper's 0.05. `loss_type` must be
    `"sigmoid"` (the paper's sigmoid-norm) or `"hinge"` (its hinge-norm); TRL's `"sigmoid_norm"` is a length
    normalisation, not RSO's. Everything else (reference model, PEFT, `precompute_ref_log_probs`, `max_length`,
    logging) means what it means in TRL.

    > Parameters that differ from [`~trl.DPOConfig`]:
    >
    > - `beta`: Defaults to `0.05` (the paper's γ) instead of `0.1`.

    Parameters:
        num_candidates (`int`, *optional*, defaults to `64`):
            Completions sampled from the starting (SFT) policy per prompt (the paper's N).
        num_accepted (`int`, *optional*, defaults to `8`):
            Candidates kept per prompt by the paper's Algorithm 1 (k in "k-of-N"); at most `num_candidates`, at least
            2 (a pair needs two).
        rso_beta (`float`, *optional*, defaults to `0.5`):
            β of the sampler's target π_r ∝ π_sft·exp(r/β). Small values keep the top-reward candidates, large ones a
            uniform subset. Distinct from `beta`, the loss's γ.
        pairing (`str`, *optional*, defaults to `"first_round"`):
            How accepted candidates are paired, each pair labelled by reward: `"first_round"` (random disjoint pairs,
            `num_accepted // 2` per prompt, the paper's default) or `"tournament"` (a single-elimination bracket over a
            random shuffle, `num_accepted - 1` pairs per prompt).
        drop_tied_pairs (`bool`, *optional*, defaults to `True`):
            Drop pairs whose two candidates have equal rewards (they carry no preference); their count is logged.
        sampling_temperature (`float`, *optional*, defaults to `0.7`):
            Sampling temperature of the candidates (the paper's 0.7).
        sampling_top_k (`int`, *optional*, defaults to `40`):
            Top-k of the candidate sampling (the paper's 40); `0` disables it.
        sampling_top_p (`float`, *optional*, defaults to `1.0`):
            Nucleus sampling of the candidates; `1.0` disables it.
        max_new_tokens (`int`, *optional*, defaults to `256`):
            Maximum number of tokens generated per candidate.
        sampling_batch_size (`int`, *optional*, defaults to `8`):
            Prompts per batch (each batch produces `sampling_batch_size * num_candidates` sequences; batch `b` is
            seeded `sampling_seed + b`) and per append to the resumable candidate cache. With the server backend, set
            it to at least `generation_concurrency`: a batch's prompts are the requests in flight.
        reward_batch_size (`int`, *optional*, defaults to `16`):
            Sequences per forward of a reward model given as a checkpoint.
        sampling_seed (`int`, *optional*):
            Seed of the candidate generation and of the acceptance/pairing draws; defaults to `seed`.
        samples_dir (`str`, *optional*):
            Where the candidates, the accepted set and the pairs are saved; defaults to `<output_dir>/rso_samples`. A
            later run with the same prompts, policy (fingerprint), reward (identity) and settings reuses them instead
            of generating again.
        reward_model_path (`str`, *optional*):
            Path or hub id of a sequence-classification reward model (one logit, as TRL's `RewardTrainer` trains it),
            used when no `reward_model` is passed to the trainer (the CLI and YAML recipes set it here).
    """

    beta: float = field(
        default=0.05,
        metadata={"help": "γ of the RSO loss σ(γΔ) / max(0, 1 − γΔ) (TRL's DPO β). The RSO paper uses 0.05."},
    )
    num_candidates: int = field(
        default=64,
        metadata={
            "help": "Completions sampled from the starting (SFT) policy per prompt, the paper's N (>= "
            "num_accepted). Default 64, the paper's; generation cost grows linearly with it."
        },
    )
    num_accepted: int = field(
        default=8,
        metadata={
            "help": "Candidates kept per prompt by statistical rejection sampling (2 <= k <= num_candidates); "
            "they form num_accepted/2 pairs (first_round) or num_accepted-1 (tournament). Default 8, the "
            "paper's."
        },
    )
    rso_beta: float = field(
        default=0.5,
        metadata={"help": "β of the sampler's target π_sft·exp(r/β) (not the loss's `beta`). The paper uses 0.5."},
    )
    pairing: str = field(
        default="first_round",
        metadata={
            "help": "How accepted candidates become pairs, each labelled by reward: first_round (random disjoint "
            "pairs, the paper's default) or tournament (a single-elimination bracket, more pairs per "
            "prompt).",
            "choices": list(RSO_PAIRINGS),
        },
    )
    drop_tied_pairs: bool = field(
        default=True,
        metadata={
            "help": "Drop pairs whose two candidates have equal rewards (they carry no preference; their count is "
            "logged as rso/tied_pairs_dropped). Default True."
        },
    )
    sampling_temperature: float = field(
        default=0.7,
        metadata={
            "help": "Temperature (> 0) of the candidate sampling. Default 0.7, the paper's: diverse candidates "
            "without degenerate text."
        },
    )
    sampling_top_k: int = field(
        default=40,
        metadata={"help": "Top-k of the candidate sampling (0: off). Default 40, the paper's."},
    )
    max_new_tokens: int = field(
        default=256,
        metadata={
            "help": "Length limit of each candidate, in tokens. Default 256 fits TL;DR summaries; raise it for "
            "long answers."
        },
    )
    reward_batch_size: int = field(
        default=16,
        metadata={
            "help": "Sequences scored per forward of a reward model checkpoint (memory vs speed; not used with a "
            "callable reward)."
        },
    )
    sampling_seed: int | None = field(
        default=None,
        metadata={
            "help": "Seed of the candidate generation and of the acceptance and pairing draws (batch b is seeded "
            "sampling_seed + b); None: the training seed."
        },
    )
    samples_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder where the candidates, the accepted set and the pairs are saved; a later run with the "
            "same prompts, policy, reward and settings reuses them without generating. None: "
            "<output_dir>/rso_samples."
        },
    )
    reward_model_path: str | None = field(
        default=None,
        metadata={
            "help": "Path or hub id of a sequence-classification reward model (one logit, as TRL's RewardTrainer "
            "trains it), used when the trainer is given no reward_model; the CLI and recipes set the "
            "reward here."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if list(self.loss_type) not in [[name] for name in RSO_LOSS_TYPES]:
            raise ValueError(
                f"RSO trains with loss_type ['sigmoid'] (the paper's sigmoid-norm) or ['hinge'] (its hinge-norm), got "
                f"{self.loss_type}. Note that TRL's 'sigmoid_norm' is a length normalisation of DPO, not RSO's "
                "sigmoid-norm, which is TRL's plain 'sigmoid' with `beta` as γ."
            )
        for name in ("num_candidates", "num_accepted", "max_new_tokens", "sampling_batch_size", "reward_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if self.num_accepted < 2:
            raise ValueError(f"`num_accepted` must be >= 2 to form a pair, got {self.num_accepted}.")
        if self.num_accepted > self.num_candidates:
            raise ValueError(
                f"`num_accepted` ({self.num_accepted}) cannot exceed `num_candidates` ({self.num_candidates}): the "
                "sampler accepts distinct candidates among those generated."
            )
        if isinstance(self.rso_beta, bool) or math.isnan(self.rso_beta) or not self.rso_beta > 0:
            raise ValueError(f"`rso_beta` must be > 0 (β of π_sft·exp(r/β)), got {self.rso_beta!r}.")
        if self.pairing not in RSO_PAIRINGS:
            raise ValueError(f"`pairing` must be one of {RSO_PAIRINGS}, got {self.pairing!r}.")
        if not self.sampling_temperature > 0:
            raise ValueError(f"`sampling_temperature` must be > 0, got {self.sampling_temperature!r}.")
        if self.sampling_top_k < 0 or not 0 < self.sampling_top_p <= 1:
            raise ValueError(
                f"`sampling_top_k` must be >= 0 and `sampling_top_p` in (0, 1], got {self.sampling_top_k!r} and "
                f"{self.sampling_top_p!r}."
            )
        if self.samples_dir is None:
            self.samples_dir = os.path.join(self.output_dir or ".", "rso_samples")
        if self.sampling_seed is None:
            self.sampling_seed = self.seed
        self.check_sampling_arguments()
