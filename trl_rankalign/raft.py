"""RAFT: reward-ranked fine-tuning (Dong et al. 2023), as rounds of sample → score → SFT on the best.

Each round samples `num_samples` completions per prompt from the *current* policy with `generation.sample_and_score`
(any generation backend: transformers with each prompt prefilled once, colocated vLLM, or an OpenAI-compatible server
that follows the rounds through `policy_update`; batched, sharded across processes, resumable), keeps the best-scored
completion of each prompt and fine-tunes on those with TRL's `SFTTrainer`. No new trainer: `RAFTConfig` is an
`SFTConfig` plus the sampling fields, and `train_raft` drives the rounds. Everything lands under `output_dir`:

    output_dir/round_0/samples.jsonl     every candidate with its score (the resumable cache, keyed on the policy's
                                      fingerprint, the decoding settings and the reward's identity)
    output_dir/round_0/settings.json     the round's key (no secrets)
    output_dir/round_0/best              the selected SFT set (`datasets.save_to_disk`, inspectable)
    output_dir/round_0/model             the policy after round 0 (+ a `.done` marker)
    ...                                   the final policy is also saved to output_dir

A rerun skips finished rounds (their saved model is loaded) and resumes an interrupted round's sampling. A round is
finished only for the settings it was made with: its `.done` marker holds them (the starting policy's fingerprint,
the reward's identity, the prompts and every config field that changes a result, chained with the earlier rounds'),
so a changed setting redoes that round and every later one, reusing the samples that are still valid. The rounds run
through the shared round runner ([`trl_rankalign.online.run_rounds`]), as `iterate`'s do; with the server backend and
`policy_update`, the served policy is updated to each round's weights and verified before the round samples.
"""

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import PartialState
from datasets import Dataset, load_from_disk
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from trl import SFTConfig, SFTTrainer

from .online.keys import round_key, secrets_cleared
from .online.rounds import load_policy, run_rounds
from .online.served import ServedPolicy
from .online.settings import RoundArguments
from .sampling.arguments import backend_options
from .sampling.fingerprint import model_fingerprint, tokenizer_fingerprint
from .sampling.generation import sample_and_score, scorer_identity
from .sampling.scorers import as_scorer


logger = logging.getLogger(__name__)


@dataclass
class RAFTConfig(RoundArguments, SFTConfig):  # mixin first: its fields go last, `output_dir` stays first
    r"""
    Configuration for [`train_raft`]: TRL's [`~trl.SFTConfig`] (applied in every round) plus the sampling of the rounds
    ([`~trl_rankalign.online.settings.RoundArguments`]: generation backend, `sampling_temperature`, `sampling_top_k`,
    `sampling_top_p`, `max_new_tokens`, `sampling_batch_size`, `sampling_seed` — batch b of round r is seeded
    `sampling_seed + 1000 * r + b` —, `reward_model_path` or `reward_function`, and `policy_update`, how a server
    backend follows the rounds).

    Parameters:
        num_rounds (`int`, *optional*, defaults to `1`): sample → select → SFT rounds, each from the current policy.
        num_samples (`int`, *optional*, defaults to `8`): completions sampled per prompt (K of best-of-K).
    """

    num_rounds: int = field(
        default=1,
        metadata={
            "help": "Number of sample -> keep the best -> SFT rounds (>= 1), each sampling from the current "
            "policy. Default 1: one best-of-K fine-tuning pass."
        },
    )
    num_samples: int = field(
        default=8,
        metadata={
            "help": "K of best-of-K: completions sampled per prompt in each round (>= 1). Default 8: larger K "
            "selects better samples at a linear sampling cost."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.num_rounds < 1:
            raise ValueError(f"num_rounds must be >= 1, got {self.num_rounds}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        self.check_round_arguments(self.num_rounds)


def select_best(rows: list[dict]) -> Dataset:
    """Prompt-completion rows with each prompt's best-scored completion (the first on a tie)."""
    best = []
    for row in rows:
        top = max(range(len(row["scores"])), key=lambda k: row["scores"][k])
        best.append({"prompt": row["prompt"], "completion": row["completions"][top], "score": row["scores"][top]})
    return Dataset.from_list(best)


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
    if args.policy_update == "lora" and peft_config is None:
        raise ValueError("policy_update='lora' loads each round's adapter into the server: pass a peft_config.")
    scorer = as_scorer(reward)
    start = model_fingerprint(model)  # of the checkpoint's files for a path, of the weights otherwise
    reward_id = scorer_identity(scorer)
    if isinstance(model, str):
        processing_class = processing_class or AutoTokenizer.from_pretrained(model)
        model = AutoModelForCausalLM.from_pretrained(model, **(args.model_init_kwargs or {}))
    if processing_class is None:
        raise ValueError("Pass the policy's `processing_class` together with a loaded model.")
    tokenizer_id = tokenizer_fingerprint(processing_class)

    def key(previous, index):
        return round_key(
            previous, index, args, policy=start, reward=reward_id, tokenizer=tokenizer_id, prompts=prompts
        )

    def sample(current, policy):
        options = {**backend_options(args), **{k: v for k, v in current.sampling.items() if k == "served_model"}}
        return sample_and_score(
            policy,
            processing_class,
            prompts,
            args.num_samples,
            scorer=scorer,
            batch_size=args.sampling_batch_size,
            cache_file=current.dir / "samples.jsonl",
            seed=args.sampling_seed + 1000 * current.index,
            desc=f"RAFT round {current.index}: sampling",
            model_identity=current.sampling.get("model_identity"),
            **options,
            **args.decoding(),
        )

    def select(current, rows):
        best = select_best(rows)
        if PartialState().is_main_process:
            best.save_to_disk(str(current.dir / "best"))
        all_scores = [s for row in rows for s in row["scores"]]
        metrics = {
            "mean_reward": sum(all_scores) / len(all_scores),
            "mean_reward_best": sum(best["score"]) / len(best),
        }
        return best, metrics

    def train(current, policy, best, metrics):
        round_args = dataclasses.replace(args, output_dir=str(current.dir / "sft"), **secrets_cleared(args))
        trainer = SFTTrainer(
            model=policy,
            args=round_args,
            train_dataset=best.remove_columns("score"),
            processing_class=processing_class,
            peft_config=peft_config if current.index == 0 else None,
        )
        trainer.train()
        trainer.save_model(str(current.model_dir))
        metrics["train_loss"] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        return trainer.model

    def load(current, policy):
        return load_policy(current.model_dir, policy, args.model_init_kwargs, peft=peft_config is not None)

    model, _ = run_rounds(
        args.output_dir,
        args.num_rounds,
        model,
        key=key,
        sample=sample,
        select=select,
        train=train,
        load=load,
        products=("best", "sft"),
        served=ServedPolicy.from_args(args, processing_class),
        processing_class=processing_class,
        name="RAFT",
    )
    return model


def load_raft_round(output_dir: str, round_index: int) -> Dataset:
    """The SFT set a finished round selected (to inspect it)."""
    return load_from_disk(str(Path(output_dir) / f"round_{round_index}" / "best"))
