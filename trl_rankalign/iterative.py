"""Online listwise alignment: rounds of sample → score → listwise train, each round from the *current* policy.

Each round samples `num_samples` (K) completions per prompt from the current policy (batched, sharded across
processes, resumable: [`trl_rankalign.sampling.generation.sample_and_score`]), scores them with a reward model or a
Python callable, turns each prompt's samples into a ranked list and trains one listwise method on the fresh lists:

- `method`: `"rankdpo"` (Plackett–Luce, `ties` as in [`RankDPOConfig`]), `"lipo"` (LiPO-λ), `"pro"` (PRO,
  reference-free) or `"dpo"` (each list's best against its worst, which is TRL's sigmoid DPO exactly: RankDPO on
  K=2 lists);
- `select`: `"all"` (the K samples are the list) or `"rso"` (RSO's statistical rejection sampling keeps
  `num_accepted` of them, drawn from π·exp(r/`rso_beta`): RSO's iterative form, with a listwise loss);
- `reference`: `"sft"` (the starting policy throughout) or `"previous"` (the policy the round started from).

Nothing is trained on silently: an empty completion or a non-finite reward drops that completion, a list left with fewer than two completions
or fully tied is dropped, every count is reported per round, and a round where no list is usable stops with an error.

Everything lands under `output_dir`:

    output_dir/round_0/settings.json     what the round depends on (a changed setting redoes the round and later ones)
    output_dir/round_0/samples.jsonl     the sampled completions (the resumable cache of the sampling)
    output_dir/round_0/lists             the scored, selected ranked lists (`datasets.save_to_disk`)
    output_dir/round_0/model             the policy after the round (+ `.done`)
    output_dir/rounds.jsonl              one line of metrics per finished round
    output_dir/                          the final policy
"""

import copy
import dataclasses
import hashlib
import inspect
import json
import logging
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel
from trl.trainer.utils import selective_log_softmax

from .data.collator import DataCollatorForRankedPreference
from .pro_config import PROConfig
from .pro_trainer import PROTrainer
from .rank_dpo_config import RankDPOConfig
from .rank_dpo_trainer import RankDPOTrainer
from .rejection_sampling import batched_statistical_rejection_sampling
from .sampling.arguments import GenerationArguments, backend_options, check_generation_arguments
from .sampling.generation import sample_and_score
from .sampling.prompts import answer_text
from .sampling.scorers import as_scorer


logger = logging.getLogger(__name__)

METHODS = ("rankdpo", "lipo", "pro", "dpo")
SELECTIONS = ("all", "rso")
REFERENCES = ("sft", "previous")
ROUNDS_FILE = "rounds.jsonl"


@dataclass
class IterativeConfig(GenerationArguments, RankDPOConfig):  # mixin first: `output_dir` stays the first field
    r"""
    Configuration for [`train_iterative`]: the listwise training of every round ([`RankDPOConfig`]'s fields: β,
    `ties`, learning rate, steps, ...), the generation backend
    ([`~trl_rankalign.sampling.arguments.GenerationArguments`]: `transformers` or colocated `vllm`, which takes the
    current weights every round; a `server` serves fixed weights, so it is accepted for `num_rounds=1` only) and the
    loop's own fields. `max_steps`/`num_train_epochs` apply per round.

    Parameters:
        method (`str`, *optional*, defaults to `"rankdpo"`): `"rankdpo"`, `"lipo"`, `"pro"` or `"dpo"` (best vs worst).
        num_rounds (`int`, *optional*, defaults to `2`): sample → score → train rounds.
        num_samples (`int`, *optional*, defaults to `4`): completions sampled per prompt and round (K).
        prompts_per_round (`int`, *optional*): each round takes the next this many prompts (wrapping around), as
            iterative DPO recipes do; `None`: every prompt in every round.
        select (`str`, *optional*, defaults to `"all"`): `"all"` or `"rso"` (statistical rejection sampling).
        num_accepted (`int`, *optional*): completions RSO accepts per prompt (default: half of `num_samples`, >= 2).
        rso_beta (`float`, *optional*, defaults to `0.5`): β of RSO's target π·exp(r/β).
        reference (`str`, *optional*, defaults to `"sft"`): `"sft"` or `"previous"` (the round's starting policy).
        pro_sft_weight (`float`, *optional*, defaults to `0.05`): PRO's `sft_weight` (method `"pro"`).
        sampling_temperature, sampling_top_k, sampling_top_p, max_new_tokens, sampling_batch_size, sampling_seed:
            the sampling of every round (round r, batch b is seeded `sampling_seed + 1000 * r + b`).
        reward_model_path (`str`, *optional*): a sequence-classification reward model.
        reward_function (`str`, *optional*): a reward callable `"module:function"` with TRL's reward-function
            signature `(prompts, completions, **kwargs) -> rewards` (exactly one of the two in a recipe).
    """

    method: str = field(default="rankdpo", metadata={"help": "Listwise method.", "choices": list(METHODS)})
    num_rounds: int = field(default=2, metadata={"help": "Sample -> score -> train rounds."})
    num_samples: int = field(default=4, metadata={"help": "Completions sampled per prompt and round (K)."})
    prompts_per_round: int | None = field(default=None, metadata={"help": "Prompts per round (None: all)."})
    select: str = field(default="all", metadata={"help": "List selection.", "choices": list(SELECTIONS)})
    num_accepted: int | None = field(default=None, metadata={"help": "Completions RSO accepts per prompt."})
    rso_beta: float = field(default=0.5, metadata={"help": "beta of RSO's target pi * exp(r / beta)."})
    reference: str = field(default="sft", metadata={"help": "Reference policy.", "choices": list(REFERENCES)})
    pro_sft_weight: float = field(default=0.05, metadata={"help": "PRO's sft_weight (method pro)."})
    sampling_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    sampling_top_k: int = field(default=0, metadata={"help": "Sampling top-k (0 = off)."})
    sampling_top_p: float = field(default=1.0, metadata={"help": "Sampling top-p."})
    max_new_tokens: int = field(default=64, metadata={"help": "Maximum new tokens per sampled completion."})
    sampling_batch_size: int = field(default=8, metadata={"help": "Prompts per generate call."})
    sampling_seed: int = field(default=0, metadata={"help": "Seed of the sampling."})
    reward_model_path: str | None = field(default=None, metadata={"help": "Reward model checkpoint."})
    reward_function: str | None = field(default=None, metadata={"help": "Reward callable as 'module:function'."})

    def __post_init__(self):
        super().__post_init__()
        for name, value, choices in (
            ("method", self.method, METHODS),
            ("select", self.select, SELECTIONS),
            ("reference", self.reference, REFERENCES),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        if self.num_rounds < 1:
            raise ValueError(f"num_rounds must be >= 1, got {self.num_rounds}")
        if self.num_samples < 2:
            raise ValueError(f"num_samples must be >= 2 (a list needs two completions), got {self.num_samples}")
        if self.prompts_per_round is not None and self.prompts_per_round < 1:
            raise ValueError(f"prompts_per_round must be >= 1, got {self.prompts_per_round}")
        if self.num_accepted is None:
            self.num_accepted = max(2, self.num_samples // 2)
        if not 2 <= self.num_accepted <= self.num_samples:
            raise ValueError(f"num_accepted must be in [2, num_samples={self.num_samples}], got {self.num_accepted}")
        if not self.rso_beta > 0:
            raise ValueError(f"rso_beta must be > 0, got {self.rso_beta}")
        check_generation_arguments(self)
        if self.generation_backend == "server" and self.num_rounds > 1:
            raise ValueError(
                "generation_backend=server samples from fixed served weights, but every round after the first samples "
                "the policy it just trained: use transformers or vllm for num_rounds > 1."
            )
        if self.method == "pro" and self.reference == "previous":
            raise ValueError("method='pro' is reference-free: `reference` has no meaning there; keep 'sft'.")


# ---------------------------------------------------------------------------------------------------- lists
def score_rows(rows: list[dict], reward: Callable[[list, list], Any]) -> list[dict]:
    """Score every sampled completion; a non-finite reward becomes NaN (counted later, never trained on). Sharded
    across processes, every process returns all rows."""
    state = PartialState()
    with state.split_between_processes(list(range(len(rows)))) as mine:
        scored = []
        for i in mine:
            row = rows[i]
            values = reward([row["prompt"]] * len(row["completions"]), list(row["completions"]))
            values = values.tolist() if isinstance(values, torch.Tensor) else list(values)
            if len(values) != len(row["completions"]):
                raise ValueError(f"the reward returned {len(values)} values for {len(row['completions'])} completions")
            scores = [float(v) if v is not None and math.isfinite(float(v)) else math.nan for v in values]
            scored.append({**row, "scores": scores})
    scored = gather_object(scored) if state.num_processes > 1 else scored
    return sorted(scored, key=lambda row: row["index"])


def build_lists(rows: list[dict], args: IterativeConfig, seed: int) -> tuple[list[dict], dict]:
    """Ranked lists `{prompt, completions, scores}` from scored samples, and the round's counts."""
    counts = {
        "samples": 0,
        "empty_completions": 0,
        "nonfinite_rewards": 0,
        "too_few_completions": 0,
        "fully_tied": 0,
        "accepted": 0,
    }
    generator = torch.Generator().manual_seed(seed)
    lists = []
    for row in rows:
        counts["samples"] += len(row["scores"])
        nonempty = [(c, s) for c, s in zip(row["completions"], row["scores"]) if answer_text(c)]
        counts["empty_completions"] += len(row["scores"]) - len(nonempty)  # the schema refuses them
        kept = [(c, s) for c, s in nonempty if not math.isnan(s)]
        counts["nonfinite_rewards"] += len(nonempty) - len(kept)
        if args.select == "rso" and len(kept) >= 2:
            accepted = batched_statistical_rejection_sampling(
                [[s for _, s in kept]], min(args.num_accepted, len(kept)), args.rso_beta, generator=generator
            )[0]
            kept = [kept[i] for i in accepted]
            counts["accepted"] += len(kept)
        if len(kept) < 2:
            counts["too_few_completions"] += 1
            continue
        scores = [s for _, s in kept]
        if max(scores) == min(scores):
            counts["fully_tied"] += 1
            continue
        if args.method == "dpo":  # best vs worst: TRL's sigmoid DPO on one pair per prompt
            best = max(range(len(kept)), key=lambda k: scores[k])
            worst = min(range(len(kept)), key=lambda k: scores[k])
            kept = [kept[best], kept[worst]]
        lists.append({"prompt": row["prompt"], "completions": [c for c, _ in kept], "scores": [s for _, s in kept]})
    counts["lists"] = len(lists)
    return lists, counts


# --------------------------------------------------------------------------------------------------- rounds
def _reward_callable(reward) -> Callable[[list, list], Any]:
    """A plain callable returns its raw values (NaN counted, not raised); a reward model is scored by `as_scorer`."""
    if callable(reward) and not isinstance(reward, str | PreTrainedModel):
        return reward
    return as_scorer(reward)


def _identity(obj) -> str:
    """What a reward is, for the round's settings: a path, or a callable's module, name and source code."""
    if isinstance(obj, str):
        return obj
    if isinstance(obj, PreTrainedModel):
        return f"{type(obj).__name__}:{obj.config._name_or_path}"
    try:
        source = inspect.getsource(obj)
    except (OSError, TypeError):
        source = repr(obj)
    name = f"{getattr(obj, '__module__', '')}:{getattr(obj, '__qualname__', type(obj).__name__)}"
    return f"{name}:{hashlib.sha256(source.encode()).hexdigest()[:16]}"


def _round_settings(args: IterativeConfig, model_id: str, reward_id: str, prompts: Sequence[Any]) -> dict:
    """Everything a round's result depends on, apart from the previous rounds (whose settings it includes)."""
    ignored = {"output_dir", "logging_dir", "run_name", "report_to", "disable_tqdm", "logging_steps", "num_rounds"}
    # how fast samples come, not what they are
    ignored |= {"generation_concurrency", "generation_max_retries", "generation_timeout", "generation_rps"}
    values = {k: v for k, v in dataclasses.asdict(args).items() if k not in ignored}
    prompts_hash = hashlib.sha256(json.dumps(list(prompts), sort_keys=True, default=str).encode()).hexdigest()
    return json.loads(
        json.dumps({"config": values, "model": model_id, "reward": reward_id, "prompts": prompts_hash}, default=str)
    )


def _round_config(args: IterativeConfig, output_dir: str):
    """The round's trainer config: a `RankDPOConfig` (rankdpo, lipo, dpo) or a `PROConfig` (pro)."""
    if args.method == "pro":
        names = {f.name for f in dataclasses.fields(PROConfig) if f.init}
        values = {k: v for k, v in dataclasses.asdict(args).items() if k in names}
        values.update(output_dir=output_dir, sft_weight=args.pro_sft_weight, precompute_ref_log_probs=True)
        return PROConfig(**values)
    rank_loss = "lipo" if args.method == "lipo" else "plackett_luce"
    names = {f.name for f in dataclasses.fields(RankDPOConfig) if f.init}
    values = {k: v for k, v in dataclasses.asdict(args).items() if k in names}
    values.update(output_dir=output_dir, rank_loss=rank_loss)
    return RankDPOConfig(**values)


@torch.no_grad()
def completion_logps(models: Sequence[PreTrainedModel], tokenized: Dataset, pad_token_id: int, batch_size: int = 2):
    """Summed log-prob of each completion of each tokenised list under each model: one `(N, K)` tensor per model
    (0 at padded slots). A plain forward and TRL's memory-efficient `selective_log_softmax`: no fused head needed."""
    collator = DataCollatorForRankedPreference(pad_token_id=pad_token_id)
    values = [[] for _ in models]
    for start in range(0, len(tokenized), batch_size):
        batch = collator([tokenized[i] for i in range(start, min(start + batch_size, len(tokenized)))])
        num_lists, num_completions = batch["list_mask"].shape
        for model, out in zip(models, values):
            device = next(model.parameters()).device
            input_ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits[:, :-1]
            per_token = selective_log_softmax(logits.float(), input_ids[:, 1:])  # (K * B, L - 1)
            per_token = per_token * batch["completion_mask"][:, 1:].to(device)
            out.append(per_token.sum(dim=1).view(num_completions, num_lists).T.cpu())  # (B, K)
    return [torch.cat(out) for out in values]


def train_iterative(
    model: str | PreTrainedModel,
    prompts: Sequence[Any],
    args: IterativeConfig,
    reward: str | PreTrainedModel | Callable[..., Any] | None = None,
    processing_class=None,
    peft_config=None,
) -> PreTrainedModel:
    """Run `args.num_rounds` rounds of sample → score → listwise train; return the final policy (also saved to
    `args.output_dir`). A rerun resumes at the first unfinished round (and within its sampling, at the last finished
    batch); a round whose settings changed is redone, with every later round.

    Args:
        model: the starting (SFT) policy, a path or a loaded causal LM.
        prompts: prompt strings or chat-message lists.
        args: the listwise training of each round plus the loop's fields.
        reward: a reward-model path, a loaded reward model or a callable `(prompts, completions) -> rewards`;
            defaults to `args.reward_model_path`.
        processing_class: the policy's tokenizer (loaded from `model` when it is a path).
        peft_config: a PEFT adapter trained through the rounds (the reference is then the adapter-disabled base, so
            `reference` must be `"sft"`).
    """
    reward = reward if reward is not None else args.reward_model_path
    if reward is None:
        raise ValueError("train_iterative needs a reward: pass `reward` or set `reward_model_path`.")
    if len(prompts) == 0:
        raise ValueError("train_iterative needs prompts: the prompt set is empty.")
    if peft_config is not None and args.reference == "previous":
        raise ValueError("With PEFT the reference is the adapter-disabled base (the SFT policy): use reference='sft'.")
    state = PartialState()
    output = Path(args.output_dir)
    model_id = model if isinstance(model, str) else model.config._name_or_path
    if isinstance(model, str):
        processing_class = processing_class or AutoTokenizer.from_pretrained(model)
        model = AutoModelForCausalLM.from_pretrained(model, **(args.model_init_kwargs or {}))
    if processing_class is None:
        raise ValueError("Pass the policy's `processing_class` together with a loaded model.")
    # The SFT policy, frozen: the reference of `reference="sft"` and of the KL metric (PEFT: the adapter-disabled base)
    sft_model = _frozen_copy(model) if peft_config is None else None
    scorer = _reward_callable(reward)
    generation_config = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        do_sample=True,
        temperature=args.sampling_temperature,
        top_k=args.sampling_top_k,
        top_p=args.sampling_top_p,
        eos_token_id=processing_class.eos_token_id,
    )

    settings_chain = {"model": model_id}
    history = []
    for round_index in range(args.num_rounds):
        round_dir = output / f"round_{round_index}"
        settings_chain = {"previous": settings_chain, **_round_settings(args, model_id, _identity(reward), prompts)}
        settings_chain["round"] = round_index
        if _finished(round_dir, settings_chain):
            logger.info("Iterative round %d already finished: loading %s", round_index, round_dir / "model")
            model = _load_round_model(round_dir / "model", model, args, peft_config)
            history.append(json.loads((round_dir / "metrics.json").read_text()))
            continue
        if state.is_main_process:
            _reset_round_dir(round_dir, settings_chain)
        state.wait_for_everyone()

        rows = sample_and_score(
            model,
            processing_class,
            round_prompts(prompts, round_index, args.prompts_per_round),
            args.num_samples,
            generation_config=generation_config,
            batch_size=args.sampling_batch_size,
            cache_file=round_dir / "samples.jsonl",
            seed=args.sampling_seed + 1000 * round_index,
            desc=f"Iterative round {round_index}: sampling",
            **backend_options(args),
        )
        rows = score_rows(rows, scorer)
        lists, counts = build_lists(rows, args, seed=args.sampling_seed + 1000 * round_index)
        finite = [s for row in rows for s in row["scores"] if not math.isnan(s)]
        metrics = {
            "round": round_index,
            "mean_reward": sum(finite) / len(finite) if finite else math.nan,
            **counts,
        }
        if args.select == "rso":
            usable = counts["samples"] - counts["empty_completions"] - counts["nonfinite_rewards"]
            metrics["acceptance_rate"] = counts["accepted"] / max(usable, 1)
        if not lists:
            raise ValueError(
                f"Iterative round {round_index}: no usable list ({counts}): every list had fewer than two non-empty "
                "completions with a finite reward, or only tied scores. Check the reward, or sample more "
                "(`num_samples`)."
            )
        logger.info("Iterative round %d: %s", round_index, metrics)
        lists = Dataset.from_list(lists)
        if state.is_main_process:
            lists.save_to_disk(str(round_dir / "lists"))

        if args.method == "pro" or peft_config is not None:
            reference = None  # reference-free, or the adapter-disabled base
        elif args.reference == "sft" or round_index == 0:
            reference = sft_model
        else:  # the policy this round starts from, as the previous round saved it
            reference = _load_round_model(output / f"round_{round_index - 1}" / "model", None, args, None, frozen=True)
        trainer_class = PROTrainer if args.method == "pro" else RankDPOTrainer
        trainer = trainer_class(
            model=model,
            ref_model=reference,
            args=_round_config(args, str(round_dir / "trainer")),
            train_dataset=lists,
            processing_class=processing_class,
            peft_config=peft_config if round_index == 0 else None,
        )
        if sft_model is not None:  # KL(pi_round || pi_SFT), estimated on the round's own samples before it trains
            metrics["kl_to_sft"] = _kl_to_sft(trainer, sft_model, rows)
        trainer.log({f"round/{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)})
        trainer.train()
        trainer.save_model(str(round_dir / "model"))
        if state.is_main_process:
            metrics["train_loss"] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
            (round_dir / "metrics.json").write_text(json.dumps(metrics) + "\n")
            with open(output / ROUNDS_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(metrics) + "\n")
            (round_dir / "model" / ".done").write_text(json.dumps(settings_chain, sort_keys=True))
        state.wait_for_everyone()
        history.append(metrics)
        model = trainer.model
    if state.is_main_process:
        model.save_pretrained(args.output_dir)
        processing_class.save_pretrained(args.output_dir)
    state.wait_for_everyone()
    # Not `trainer.end()` after each round: it destroys the process group the next round needs. Callers that own the
    # process (the `iterate` stage) tear it down once at the end.
    return model


def round_prompts(prompts: Sequence[Any], round_index: int, prompts_per_round: int | None) -> list:
    """The prompts of round `round_index`: all of them, or the next `prompts_per_round` (wrapping around)."""
    if prompts_per_round is None:
        return list(prompts)
    start = round_index * prompts_per_round
    return [prompts[(start + i) % len(prompts)] for i in range(prompts_per_round)]


def _frozen_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A frozen, eval-mode copy of the starting policy (taken before any trainer adds its fused head to it)."""
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    return reference.eval()


def _kl_to_sft(trainer, sft_model: PreTrainedModel, rows: list[dict]) -> float:
    """Mean of log pi(y) - log pi_SFT(y) over the round's samples (drawn from pi): a sampled estimate of the
    sequence-level KL(pi || pi_SFT), tokenised as the round's trainer tokenises. Over the non-empty samples of the
    prompts with at least two (what a ranked row can hold); NaN when there are none."""
    kept = []
    for row in rows:
        completions = [c for c in row["completions"] if answer_text(c)]
        if len(completions) >= 2:
            kept.append({"prompt": row["prompt"], "completions": completions, "scores": [0.0] * len(completions)})
    if not kept:
        return math.nan
    samples = Dataset.from_list(kept)
    samples = trainer._prepare_dataset(samples, trainer.processing_class, trainer.args, "samples")
    policy = trainer.accelerator.unwrap_model(trainer.model)
    was_training = policy.training
    policy.eval()
    policy_logps, sft_logps = completion_logps([policy, sft_model], samples, trainer.processing_class.pad_token_id)
    policy.train(was_training)
    return (policy_logps - sft_logps).sum().item() / sum(len(r["completions"]) for r in kept)


def _finished(round_dir: Path, settings: dict) -> bool:
    done = round_dir / "model" / ".done"
    return done.is_file() and json.loads(done.read_text()) == json.loads(json.dumps(settings, sort_keys=True))


def _reset_round_dir(round_dir: Path, settings: dict) -> None:
    """Keep the round's sampling cache only when it was made with the same settings; otherwise start the round over."""
    settings_file = round_dir / "settings.json"
    text = json.dumps(settings, sort_keys=True)
    if round_dir.exists() and (not settings_file.is_file() or settings_file.read_text() != text):
        logger.warning("Iterative: the settings of %s changed; redoing the round.", round_dir.name)
        shutil.rmtree(round_dir)
    for later in sorted(round_dir.parent.glob("round_*")):  # later rounds built on this one are stale now
        if int(later.name.split("_")[1]) > int(round_dir.name.split("_")[1]):
            shutil.rmtree(later)
    round_dir.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(text)
    rounds_file = round_dir.parent / ROUNDS_FILE
    if rounds_file.exists():  # keep the metrics of the earlier rounds only
        index = int(round_dir.name.split("_")[1])
        kept = [line for line in rounds_file.read_text().splitlines() if line and json.loads(line)["round"] < index]
        rounds_file.write_text("".join(line + "\n" for line in kept))


def _load_round_model(path: Path, model, args: IterativeConfig, peft_config, frozen: bool = False) -> PreTrainedModel:
    """The policy a finished round saved (its adapter on the current base with PEFT); `frozen` for a reference."""
    if peft_config is not None:
        from peft import PeftModel

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        return PeftModel.from_pretrained(base, str(path), is_trainable=True)
    loaded = AutoModelForCausalLM.from_pretrained(str(path), **(args.model_init_kwargs or {}))
    return loaded.requires_grad_(False).eval() if frozen else loaded


def load_round_lists(output_dir: str, round_index: int) -> Dataset:
    """The ranked lists a finished round trained on (to inspect them)."""
    from datasets import load_from_disk

    return load_from_disk(str(Path(output_dir) / f"round_{round_index}" / "lists"))
