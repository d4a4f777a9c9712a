"""RAFT: reward-ranked fine-tuning (Dong et al. 2023), as rounds of sample → score → SFT on the best.

Each round samples `num_samples` completions per prompt from the *current* policy with `generation.sample_and_score`
(any generation backend: transformers with each prompt prefilled once, colocated vLLM, or an OpenAI-compatible server
for a one-round run; batched, sharded across processes, resumable), keeps the best-scored completion of each prompt
and fine-tunes on those with TRL's `SFTTrainer`. No new trainer: `RAFTConfig` is an `SFTConfig` plus the sampling fields, and
`train_raft` drives the rounds. Everything lands under `output_dir`:

    output_dir/round_0/samples.jsonl     every candidate with its score (the resumable cache, keyed on the policy's
                                      fingerprint, the decoding settings and the reward's identity)
    output_dir/round_0/best              the selected SFT set (`datasets.save_to_disk`, inspectable)
    output_dir/round_0/model             the policy after round 0 (+ a `.done` marker)
    ...                                   the final policy is also saved to output_dir

A rerun skips finished rounds (their saved model is loaded) and resumes an interrupted round's sampling. A round is
finished only for the settings it was made with: its `.done` marker holds them (the starting policy's fingerprint,
the reward's identity, the prompts and every config field that changes a result, chained with the earlier rounds'),
so a changed setting redoes that round and every later one, reusing the samples that are still valid.
"""

import dataclasses
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import PartialState
from datasets import Dataset, load_from_disk
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from trl import SFTConfig, SFTTrainer

from .sampling.arguments import GenerationArguments, backend_options, check_generation_arguments
from .sampling.fingerprint import model_fingerprint, short_hash
from .sampling.generation import sample_and_score, scorer_identity
from .sampling.scorers import as_scorer


logger = logging.getLogger(__name__)


@dataclass
class RAFTConfig(GenerationArguments, SFTConfig):  # mixin first: its fields go last, `output_dir` stays first
    r"""
    Configuration for [`train_raft`]: TRL's [`~trl.SFTConfig`] (applied in every round) plus RAFT's sampling and the
    generation backend ([`~trl_rankalign.sampling.arguments.GenerationArguments`]; the server backend serves a fixed
    model, so it is accepted for `num_rounds=1` only).

    Parameters:
        num_rounds (`int`, *optional*, defaults to `1`): sample → select → SFT rounds, each from the current policy.
        num_samples (`int`, *optional*, defaults to `8`): completions sampled per prompt (K of best-of-K).
        sampling_temperature (`float`, *optional*, defaults to `1.0`): temperature of the sampling.
        sampling_top_k (`int`, *optional*, defaults to `0`): top-k of the sampling (0 = off).
        sampling_top_p (`float`, *optional*, defaults to `1.0`): top-p of the sampling (1.0 = off).
        max_new_tokens (`int`, *optional*, defaults to `64`): length limit of sampled completions.
        sampling_batch_size (`int`, *optional*, defaults to `8`): prompts per sampling batch.
        sampling_seed (`int`, *optional*, defaults to `0`): seed of the sampling (batch b of round r uses
            `sampling_seed + 1000 * r + b`).
        reward_model_path (`str`, *optional*): sequence-classification reward model used when no reward is passed.
        reward_function (`str`, *optional*): a Python reward callable as an import string `"module:function"`
            (`(prompts, completions, **kwargs) -> rewards`, TRL's reward-function signature), the reward of the `raft`
            CLI stage instead of `reward_model_path` (exactly one of the two; a recipe cannot pass a callable).
    """

    num_rounds: int = field(default=1, metadata={"help": "Number of sample → select → SFT rounds."})
    num_samples: int = field(default=8, metadata={"help": "Completions sampled per prompt."})
    sampling_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    sampling_top_k: int = field(default=0, metadata={"help": "Sampling top-k (0 = off)."})
    sampling_top_p: float = field(default=1.0, metadata={"help": "Sampling top-p (1.0 = off)."})
    max_new_tokens: int = field(default=64, metadata={"help": "Maximum new tokens per sampled completion."})
    sampling_batch_size: int = field(default=8, metadata={"help": "Prompts per sampling batch."})
    sampling_seed: int = field(default=0, metadata={"help": "Seed of the sampling."})
    reward_model_path: str | None = field(default=None, metadata={"help": "Reward model checkpoint."})
    reward_function: str | None = field(
        default=None, metadata={"help": "Reward callable as 'module:function' (the `raft` CLI stage's reward)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.num_rounds < 1:
            raise ValueError(f"num_rounds must be >= 1, got {self.num_rounds}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        check_generation_arguments(self)
        if self.generation_backend == "server" and self.num_rounds > 1:
            raise ValueError(
                "RAFT samples each round from the policy it is training; a generation server serves a fixed model, so "
                "generation_backend=server works for num_rounds=1 only (use transformers or vllm for more rounds)."
            )


def select_best(rows: list[dict]) -> Dataset:
    """Prompt-completion rows with each prompt's best-scored completion (the first on a tie)."""
    best = []
    for row in rows:
        top = max(range(len(row["scores"])), key=lambda k: row["scores"][k])
        best.append({"prompt": row["prompt"], "completion": row["completions"][top], "score": row["scores"][top]})
    return Dataset.from_list(best)


# Fields that change how a run is reported or transported, not what a round produces
_NOT_SETTINGS = {
    "output_dir", "logging_dir", "run_name", "report_to", "disable_tqdm", "logging_steps", "logging_strategy",
    "num_rounds", "sampling_batch_size", "generation_concurrency", "generation_max_retries", "generation_timeout",
    "generation_rps", "generation_api_key_env", "generation_base_url", "save_strategy", "save_steps",
    "save_total_limit", "push_to_hub", "hub_model_id", "hub_token", "dataloader_num_workers",
}  # fmt: skip


def _round_settings(args: RAFTConfig, start: str, reward_id: str, prompts: Sequence[Any]) -> dict:
    """Everything a round's result depends on besides the earlier rounds (which the caller chains in)."""
    config = {k: v for k, v in dataclasses.asdict(args).items() if k not in _NOT_SETTINGS}
    settings = {"config": config, "start": start, "reward": reward_id, "prompts": short_hash(list(prompts))}
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def _finished(marker: Path, settings: dict) -> bool:
    try:
        return json.loads(marker.read_text()) == settings
    except (OSError, json.JSONDecodeError):
        return False


def _forget_rounds_from(output: Path, first: int) -> None:
    """Delete the selected sets and models of round `first` and later (their samples stay: rows are keyed)."""
    for round_dir in sorted(output.glob("round_*")):
        if round_dir.name.split("_")[-1].isdigit() and int(round_dir.name.split("_")[-1]) >= first:
            for name in ("model", "best", "sft"):
                shutil.rmtree(round_dir / name, ignore_errors=True)


def train_raft(
    model: str | PreTrainedModel,
    prompts: Sequence[Any],
    args: RAFTConfig,
    reward: str | PreTrainedModel | Callable[..., Any] | None = None,
    processing_class=None,
    peft_config=None,
) -> PreTrainedModel:
    """Run RAFT for `args.num_rounds` rounds and return the final policy (also saved to `args.output_dir`).

    Args:
        model: the starting (SFT) policy, a path or a loaded causal LM.
        prompts: prompt strings or chat-message lists.
        args: the SFT settings of each round plus the sampling fields.
        reward: a reward-model path, a loaded reward model or a callable `(prompts, completions) -> rewards`;
            defaults to `args.reward_model_path`.
        processing_class: the policy's tokenizer (loaded from `model` when it is a path).
        peft_config: passed to `SFTTrainer` in the first round (the adapter is then trained through the rounds).
    """
    reward = reward if reward is not None else args.reward_model_path
    if reward is None:
        raise ValueError("RAFT needs a reward: pass `reward` or set `reward_model_path`.")
    if len(prompts) == 0:
        raise ValueError("RAFT needs prompts: the prompt set is empty.")
    scorer = as_scorer(reward)
    output = Path(args.output_dir)
    start = model_fingerprint(model)  # of the checkpoint's files for a path, of the weights otherwise
    reward_id = scorer_identity(scorer)
    if isinstance(model, str):
        processing_class = processing_class or AutoTokenizer.from_pretrained(model)
        model = AutoModelForCausalLM.from_pretrained(model, **(args.model_init_kwargs or {}))
    if processing_class is None:
        raise ValueError("Pass the policy's `processing_class` together with a loaded model.")
    generation = backend_options(args)
    decoding = dict(
        temperature=args.sampling_temperature,
        top_k=args.sampling_top_k,
        top_p=args.sampling_top_p,
        max_new_tokens=args.max_new_tokens,
    )

    state = PartialState()
    chain: dict = {}
    for round_index in range(args.num_rounds):
        round_dir = output / f"round_{round_index}"
        chain = {"previous": chain, "round": round_index, **_round_settings(args, start, reward_id, prompts)}
        marker = round_dir / "model" / ".done"
        if _finished(marker, chain):
            logger.info("RAFT round %d already finished: loading %s", round_index, round_dir / "model")
            model = AutoModelForCausalLM.from_pretrained(round_dir / "model", **(args.model_init_kwargs or {}))
            continue
        if marker.exists():
            logger.warning("RAFT round %d was made with other settings: redoing it and the later rounds.", round_index)
        state.wait_for_everyone()  # every process has checked the marker before it goes
        if state.is_main_process:
            _forget_rounds_from(output, round_index)
        state.wait_for_everyone()
        rows = sample_and_score(
            model,
            processing_class,
            prompts,
            args.num_samples,
            scorer=scorer,
            batch_size=args.sampling_batch_size,
            cache_file=round_dir / "samples.jsonl",
            seed=args.sampling_seed + 1000 * round_index,
            desc=f"RAFT round {round_index}: sampling",
            **generation,
            **decoding,
        )
        best = select_best(rows)
        best.save_to_disk(str(round_dir / "best"))
        all_scores = [s for row in rows for s in row["scores"]]
        logger.info(
            "RAFT round %d: mean reward of all samples %.4f, of the selected best %.4f",
            round_index,
            sum(all_scores) / len(all_scores),
            sum(best["score"]) / len(best),
        )
        round_args = dataclasses.replace(args, output_dir=str(round_dir / "sft"))
        trainer = SFTTrainer(
            model=model,
            args=round_args,
            train_dataset=best.remove_columns("score"),
            processing_class=processing_class,
            peft_config=peft_config if round_index == 0 else None,
        )
        trainer.train()
        trainer.save_model(str(round_dir / "model"))
        if trainer.accelerator.is_main_process:
            marker.write_text(json.dumps(chain, sort_keys=True))
        model = trainer.model
    # Final policy at the top of output_dir, as the other stages leave it
    model.save_pretrained(args.output_dir)
    processing_class.save_pretrained(args.output_dir)
    return model


def load_raft_round(output_dir: str, round_index: int) -> Dataset:
    """The SFT set a finished round selected (to inspect it)."""
    return load_from_disk(str(Path(output_dir) / f"round_{round_index}" / "best"))
