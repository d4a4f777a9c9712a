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

Nothing is trained on silently: an empty completion or a non-finite reward drops that completion, a list left with
fewer than two completions is dropped, every count is reported per round, and a round where no list is usable stops
with an error. Ties: with `select="all"` a fully tied list carries no preference and is dropped (counted); after RSO's
acceptance it is kept (counted as `fully_tied_kept`), because dropping it would bias the trained-on lists away from
RSO's target distribution, and the listwise losses handle ties (`ties`; LiPO has no tied pair term) — except for
`method="dpo"`, whose one pair would impose an order on two equally rewarded completions.

The rounds run through the shared round runner ([`trl_rankalign.online.run_rounds`]): a round is keyed on the
weights fingerprints of the starting policy and of the reward model (or the reward callable's code), the tokenizer, the
prompts and every setting (secrets such as `hub_token` are never written), chained round to round. Everything lands
under `output_dir`:

    output_dir/round_0/settings.json     the round's key (a changed setting redoes the round and later ones)
    output_dir/round_0/samples.jsonl     the sampled completions (the resumable cache of the sampling)
    output_dir/round_0/lists             the scored, selected ranked lists (`datasets.save_to_disk`)
    output_dir/round_0/model             the policy after the round (+ `.done`)
    output_dir/rounds.jsonl              one line of metrics per finished round (written under a lock)
    output_dir/                          the final policy

`kl_to_sft` is estimated on the sampled token ids ([`trl_rankalign.online.kl`]); `kl_to_sft_estimand` says what it
measures when the decoding warps the policy (temperature, top-k, top-p).
"""

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel

from .online.keys import round_key, secrets_cleared
from .online.kl import SampledIds, ids_from_text, kl_estimand, sampled_kl
from .online.records import ROUNDS_FILE
from .online.rounds import load_policy, run_rounds
from .online.served import ServedPolicy
from .online.settings import RoundArguments
from .pro_config import PROConfig
from .pro_trainer import PROTrainer
from .rank_dpo_config import RankDPOConfig
from .rank_dpo_trainer import RankDPOTrainer
from .rejection_sampling import batched_statistical_rejection_sampling
from .sampling.arguments import backend_options
from .sampling.fingerprint import model_fingerprint, tokenizer_fingerprint
from .sampling.generation import TransformersBackend, make_backend, render_prompt, sample_and_score, scorer_identity
from .sampling.prompts import answer_text
from .sampling.scorers import as_scorer


__all__ = [
    "ROUNDS_FILE",
    "IterativeConfig",
    "build_lists",
    "load_round_lists",
    "round_prompts",
    "score_rows",
    "train_iterative",
]

logger = logging.getLogger(__name__)

METHODS = ("rankdpo", "lipo", "pro", "dpo")
SELECTIONS = ("all", "rso")
REFERENCES = ("sft", "previous")


@dataclass
class IterativeConfig(RoundArguments, RankDPOConfig):  # mixin first: `output_dir` stays the first field
    r"""
    Configuration for [`train_iterative`]: the listwise training of every round ([`RankDPOConfig`]'s fields: β,
    `ties`, learning rate, steps, ...), the sampling ([`~trl_rankalign.online.settings.RoundArguments`]: backend,
    decoding, reward, and `policy_update`, how a `server` backend follows the rounds) and the loop's own fields.
    `max_steps`/`num_train_epochs` apply per round.

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
    """

    method: str = field(
        default="rankdpo",
        metadata={
            "help": "Listwise loss of every round: rankdpo (Plackett-Luce, the default), lipo (LiPO-lambda), pro "
            "(reference-free) or dpo (each list's best vs worst, TRL's sigmoid DPO).",
            "choices": list(METHODS),
        },
    )
    num_rounds: int = field(
        default=2,
        metadata={
            "help": "Number of sample -> score -> train rounds (>= 1), each sampling from the policy the previous "
            "round trained."
        },
    )
    num_samples: int = field(
        default=4,
        metadata={
            "help": "K, completions sampled per prompt and round (>= 2: a list needs two). Default 4: a useful "
            "ranking at a modest sampling cost."
        },
    )
    prompts_per_round: int | None = field(
        default=None,
        metadata={
            "help": "Prompts per round: each round takes the next N prompts, wrapping around, as iterative DPO "
            "recipes do. None: every prompt in every round."
        },
    )
    select: str = field(
        default="all",
        metadata={
            "help": "Which samples form a round's list: all (the K samples, the default) or rso (num_accepted of "
            "them kept by RSO's statistical rejection sampling towards pi * exp(r / rso_beta)).",
            "choices": list(SELECTIONS),
        },
    )
    num_accepted: int | None = field(
        default=None,
        metadata={
            "help": "With select=rso: completions kept per prompt (2 <= n <= num_samples). None: half of "
            "num_samples, at least 2."
        },
    )
    rso_beta: float = field(
        default=0.5,
        metadata={
            "help": "With select=rso: beta (> 0) of the target pi * exp(r / beta); small keeps the top rewards, "
            "large a uniform subset. Default 0.5, the RSO paper's."
        },
    )
    reference: str = field(
        default="sft",
        metadata={
            "help": "Reference model of the loss: sft (the starting policy in every round, the default: the KL "
            "anchor stays fixed) or previous (the policy the round started from).",
            "choices": list(REFERENCES),
        },
    )
    pro_sft_weight: float = field(
        default=0.05, metadata={"help": "With method=pro: PRO's sft_weight (>= 0). Default 0.05, PROConfig's."}
    )

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
        self.check_round_arguments(self.num_rounds)
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
    """Ranked lists `{prompt, completions, scores}` from scored samples, and the round's counts.

    A fully tied list is dropped with `select="all"` (counted in `fully_tied`); after RSO's acceptance it is kept
    (counted in `fully_tied_kept`) unless `method="dpo"`, so the lists follow RSO's target distribution."""
    counts = {
        "samples": 0,
        "empty_completions": 0,
        "nonfinite_rewards": 0,
        "too_few_completions": 0,
        "fully_tied": 0,
        "fully_tied_kept": 0,
        "accepted": 0,
    }
    keep_ties = args.select == "rso" and args.method != "dpo"
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
            if not keep_ties:
                counts["fully_tied"] += 1
                continue
            counts["fully_tied_kept"] += 1
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


def _round_config(args: IterativeConfig, output_dir: str):
    """The round's trainer config: a `RankDPOConfig` (rankdpo, lipo, dpo) or a `PROConfig` (pro)."""
    if args.method == "pro":
        names = {f.name for f in dataclasses.fields(PROConfig) if f.init}
        values = {k: v for k, v in dataclasses.asdict(args).items() if k in names}
        values.update(output_dir=output_dir, sft_weight=args.pro_sft_weight, precompute_ref_log_probs=True)
        return PROConfig(**{**values, **secrets_cleared(args)})
    rank_loss = "lipo" if args.method == "lipo" else "plackett_luce"
    names = {f.name for f in dataclasses.fields(RankDPOConfig) if f.init}
    values = {k: v for k, v in dataclasses.asdict(args).items() if k in names}
    values.update(output_dir=output_dir, rank_loss=rank_loss)
    return RankDPOConfig(**{**values, **secrets_cleared(args)})  # no secret in what the round's trainer saves


def kl_to_sft(policy, sft_model, rows: list[dict], recorded: SampledIds, processing_class) -> tuple[float, str, int]:
    """`(mean of log π − log π_SFT over the round's samples, "ids" or "text", number of samples)`.

    On the token ids the transformers backend sampled (this process's batches; summed across processes); from the
    decoded text, without EOS, only where no ids were recorded (server or vLLM backend, or a round whose samples were
    all cached)."""
    state = PartialState()
    source = "ids" if gather_object([bool(recorded.samples)]).count(True) == state.num_processes else "text"
    if source == "ids":
        samples = recorded.samples
    else:
        with state.split_between_processes(rows) as mine:
            samples = ids_from_text(
                processing_class,
                [render_prompt(processing_class, row["prompt"]) for row in mine],
                [[c if isinstance(c, str) else answer_text(c) for c in row["completions"]] for row in mine],
            )
    pad = processing_class.pad_token_id if processing_class.pad_token_id is not None else processing_class.eos_token_id
    parts = gather_object([sampled_kl(policy, sft_model, samples, pad)])
    total, count = sum(p[0] for p in parts), sum(p[1] for p in parts)
    return (total / count if count else math.nan), source, count


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
    batch); a round whose settings changed — any setting, the starting policy's or the reward model's weights, the
    reward's code, the prompts — is redone, with every later round.

    Args:
        model: the starting (SFT) policy, a path or a loaded causal LM.
        prompts: prompt strings or chat-message lists.
        args: the listwise training of each round plus the loop's fields.
        reward: a reward-model path, a loaded reward model or a callable `(prompts, completions) -> rewards`;
            defaults to `args.reward_model_path`.
        processing_class: the policy's tokenizer (loaded from `model` when it is a path).
        peft_config: a PEFT adapter trained through the rounds; `reference` must be `"sft"` (a frozen copy of the
            starting policy, also passed to every round's trainer so that TRL does not take the round's adapter).
    """
    reward = reward if reward is not None else args.reward_model_path
    if reward is None:
        raise ValueError("train_iterative needs a reward: pass `reward` or set `reward_model_path`.")
    if len(prompts) == 0:
        raise ValueError("train_iterative needs prompts: the prompt set is empty.")
    if peft_config is not None and args.reference == "previous":
        raise ValueError("With PEFT the reference is the adapter-disabled base (the SFT policy): use reference='sft'.")
    if args.policy_update == "lora" and peft_config is None:
        raise ValueError("policy_update='lora' loads each round's adapter into the server: pass a peft_config.")
    state = PartialState()
    output = Path(args.output_dir)
    start = model_fingerprint(model)  # of the checkpoint's files for a path, of the weights otherwise
    if isinstance(model, str):
        processing_class = processing_class or AutoTokenizer.from_pretrained(model)
        model = AutoModelForCausalLM.from_pretrained(model, **(args.model_init_kwargs or {}))
    if processing_class is None:
        raise ValueError("Pass the policy's `processing_class` together with a loaded model.")
    # The SFT policy, frozen: the reference of `reference="sft"` and of the KL metric. With PEFT too: from round 1 the
    # policy is a trained `PeftModel`, and given no reference, TRL's DPOTrainer copies its adapter into a "ref" adapter
    # (the previous round's policy, not the SFT one; left on the policy, so the next round fails adding it again).
    sft_model = _frozen_copy(model)
    scorer = _reward_callable(reward)
    reward_id = scorer_identity(scorer)
    tokenizer_id = tokenizer_fingerprint(processing_class)
    generation_config = GenerationConfig(do_sample=True, eos_token_id=processing_class.eos_token_id, **args.decoding())

    def key(previous, index):
        return round_key(
            previous,
            index,
            args,
            policy=start,
            reward=reward_id,
            tokenizer=tokenizer_id,
            prompts=round_prompts(prompts, index, args.prompts_per_round),
        )

    def sample(current, policy):
        options = backend_options(args)
        backend = options.pop("backend")
        recorded = SampledIds()
        if backend == "transformers":
            engine = TransformersBackend(args.sampling_batch_size, generation_config, on_token_ids=recorded)
        else:
            options.update({k: v for k, v in current.sampling.items() if k == "served_model"})
            engine = make_backend(backend, **options)
        rows = sample_and_score(
            policy,
            processing_class,
            round_prompts(prompts, current.index, args.prompts_per_round),
            args.num_samples,
            generation_config=generation_config,
            batch_size=args.sampling_batch_size,
            cache_file=current.dir / "samples.jsonl",
            seed=args.sampling_seed + 1000 * current.index,
            desc=f"Iterative round {current.index}: sampling",
            backend=engine,
            model_identity=current.sampling.get("model_identity"),
        )
        return rows, recorded

    def score(current, sampled):
        rows, recorded = sampled
        return score_rows(rows, scorer), recorded

    def select(current, scored):
        rows, recorded = scored
        lists, counts = build_lists(rows, args, seed=args.sampling_seed + 1000 * current.index)
        finite = [s for row in rows for s in row["scores"] if not math.isnan(s)]
        metrics = {"mean_reward": sum(finite) / len(finite) if finite else math.nan, **counts}
        if args.select == "rso":
            usable = counts["samples"] - counts["empty_completions"] - counts["nonfinite_rewards"]
            metrics["acceptance_rate"] = counts["accepted"] / max(usable, 1)
        informative = counts["lists"] - counts["fully_tied_kept"]
        if not lists or informative == 0:
            raise ValueError(
                f"Iterative round {current.index}: no usable list ({counts}): every list had fewer than two non-empty "
                "completions with a finite reward, or only tied scores. Check the reward, or sample more "
                "(`num_samples`)."
            )
        lists = Dataset.from_list(lists)
        if state.is_main_process:
            lists.save_to_disk(str(current.dir / "lists"))
        return (lists, rows, recorded), metrics

    def train(current, policy, selected, metrics):
        lists, rows, recorded = selected
        # KL(pi_round || pi_SFT) on the round's own samples, before it trains
        started = time.perf_counter()
        value, source, count = kl_to_sft(policy, sft_model, rows, recorded, processing_class)
        metrics.update(kl_to_sft=value, kl_to_sft_source=source, kl_to_sft_samples=count)
        metrics["time/kl"] = time.perf_counter() - started  # part of time/train
        metrics["kl_to_sft_estimand"] = kl_estimand(
            args.sampling_temperature, args.sampling_top_k, args.sampling_top_p
        )
        if args.method == "pro":
            reference = None  # reference-free
        elif args.reference == "sft" or current.index == 0:
            reference = sft_model
        else:  # the policy this round starts from, as the previous round saved it
            previous = output / f"round_{current.index - 1}" / "model"
            reference = _load_round_model(previous, None, args, None, frozen=True)
        trainer_class = PROTrainer if args.method == "pro" else RankDPOTrainer
        trainer = trainer_class(
            model=policy,
            ref_model=reference,
            args=_round_config(args, str(current.dir / "trainer")),
            train_dataset=lists,
            processing_class=processing_class,
            peft_config=peft_config if current.index == 0 else None,
        )
        trainer.log({f"round/{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)})
        trainer.train()
        trainer.save_model(str(current.model_dir))
        metrics["train_loss"] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        # Not `trainer.end()` after each round: it destroys the process group the next round needs. Callers that own
        # the process (the `iterate` stage) tear it down once at the end.
        return trainer.model

    def load(current, policy):
        return _load_round_model(current.model_dir, policy, args, peft_config)

    model, _ = run_rounds(
        args.output_dir,
        args.num_rounds,
        model,
        key=key,
        sample=sample,
        score=score,
        select=select,
        train=train,
        load=load,
        products=("lists", "trainer"),
        served=ServedPolicy.from_args(args, processing_class),
        processing_class=processing_class,
        name="Iterative",
    )
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


def _load_round_model(path: Path, model, args: IterativeConfig, peft_config, frozen: bool = False) -> PreTrainedModel:
    """The policy a finished round saved (its adapter on the current base with PEFT); `frozen` for a reference."""
    loaded = load_policy(path, model, args.model_init_kwargs, peft=peft_config is not None)
    return loaded.requires_grad_(False).eval() if frozen else loaded


def load_round_lists(output_dir: str, round_index: int) -> Dataset:
    """The ranked lists a finished round trained on (to inspect them)."""
    from datasets import load_from_disk

    return load_from_disk(str(Path(output_dir) / f"round_{round_index}" / "lists"))
