"""RSO: DPO on preference pairs drawn by statistical rejection sampling (Liu et al. 2023, arXiv:2309.06657).

`RSOSampler` is TRL's `DPOTrainer` whose `train_dataset` is built, before `DPOTrainer.__init__` tokenises it, from a
prompt-only dataset:

1. sample `num_candidates` completions per prompt from the starting (SFT) policy and score them with a reward model
   (`generation.sample_and_score`: any generation backend — transformers with each prompt prefilled once, an
   OpenAI-compatible server, colocated vLLM —, batched, sharded across processes, appended to a resumable JSONL cache);
2. accept `num_accepted` per prompt with the paper's Algorithm 1 (`rejection_sampling`, candidates keyed by index);
3. pair the accepted candidates (first-round or tournament), each pair labelled by reward;
4. save everything with `datasets.save_to_disk` under `samples_dir`, and reuse it on a rerun with the same prompts
   and settings instead of generating again.

Training is TRL's DPO unchanged: no hook is overridden, the loss is TRL's `"sigmoid"` (the paper's sigmoid-norm,
−log σ(γΔ)) or `"hinge"` (hinge-norm, max(0, 1 − γΔ)) with γ = `beta`. The sampling statistics are added to the first
training log next to TRL's DPO metrics. The sampling stage alone is `sample_rso_dataset` (also `RSOSampler.sample`).

Layout of `samples_dir`:

    candidates-<hash>.jsonl   every prompt's candidates and rewards, appended batch by batch (the resumable cache;
                              <hash> covers prompts, policy fingerprint, tokenizer, backend and decoding settings;
                              each row also records its scorer, and rows scored by another reward are rescored
                              without generating again)
    dataset/                  a DatasetDict (`datasets.load_from_disk`):
                                "samples": index, prompt, completions, scores, accepted, pairs  (one row per prompt;
                                           `accepted` and `pairs` hold candidate indices)
                                "pairs":   prompt, chosen, rejected, chosen_score, rejected_score, prompt_index,
                                           chosen_index, rejected_index  (what DPO trains on)
    rso_info.json             the settings and fingerprints the set was made with, and its statistics
"""

import gc
import json
import logging
import os
import shutil
import textwrap
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from datasets import Dataset, DatasetDict, IterableDataset, load_from_disk
from datasets.fingerprint import Hasher
from transformers import AutoTokenizer, PreTrainedModel
from trl import DPOTrainer
from trl.trainer.utils import create_model_from_path, get_config_model_id

from .rejection_sampling import batched_statistical_rejection_sampling, first_round_pairs, tournament_pairs
from .rso_config import RSOConfig
from .sampling.arguments import backend_options
from .sampling.fingerprint import model_fingerprint
from .sampling.generation import Decoding, cached_rows, generation_settings, make_backend, sample_and_score
from .sampling.generation import scorer_identity as _scorer_identity
from .sampling.scorers import CallableScorer, RewardModelScorer, as_scorer


__all__ = [
    "RSOSampler",
    "rso_sampling_stats",
    "sample_rso_dataset",
]

logger = logging.getLogger(__name__)

SAMPLES_FORMAT_VERSION = 2  # 2: rows record their generation settings and scorer
DATASET_DIRNAME = "dataset"
INFO_FILENAME = "rso_info.json"


# ----------------------------------------------------------------------------------------------------------------
# The sampling stage
# ----------------------------------------------------------------------------------------------------------------


def _check_prompts(dataset: Any) -> list:
    if isinstance(dataset, IterableDataset) or not isinstance(dataset, Dataset):
        raise TypeError(
            f"RSO samples from a map-style `datasets.Dataset` of prompts, got {type(dataset).__name__}; "
            "materialise an IterableDataset with `Dataset.from_generator` first."
        )
    if "prompt" not in dataset.column_names:
        raise ValueError(f"The prompt dataset needs a 'prompt' column; it has {dataset.column_names}.")
    if len(dataset) == 0:
        raise ValueError("No prompts to sample from: the prompt dataset is empty.")
    prompts = list(dataset["prompt"])
    for index, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            if not prompt.strip():
                raise ValueError(f"row {index}, field 'prompt': the prompt is empty or whitespace only.")
        elif isinstance(prompt, list):
            if len(prompt) == 0:
                raise ValueError(f"row {index}, field 'prompt': the conversation has no messages.")
        else:
            raise ValueError(
                f"row {index}, field 'prompt': expected a string or a list of chat messages, got "
                f"{type(prompt).__name__}."
            )
    return prompts


def _reward_identity(reward: Any) -> str:
    """What the rewards depend on, computed without loading anything: a reward checkpoint's file fingerprint, a loaded
    reward model's weights fingerprint, or a callable's module, name and source code."""
    if isinstance(reward, str):
        return f"reward_model:{reward}:{model_fingerprint(reward)}"
    if isinstance(reward, PreTrainedModel):
        return f"reward_model:{get_config_model_id(reward.config)}:{model_fingerprint(reward)}"
    if isinstance(reward, RewardModelScorer | CallableScorer):
        return _scorer_identity(reward)
    return _scorer_identity(CallableScorer(reward))


def _sampling(args: RSOConfig) -> tuple[Any, Decoding]:
    """The generation backend and decoding settings of an `RSOConfig`."""
    options = backend_options(args)
    backend = options.pop("backend")
    if backend == "transformers":
        options["batch_size"] = args.sampling_batch_size
    return make_backend(backend, **options), Decoding(**args.decoding(), seed=args.sampling_seed)


def _settings(prompts: list, model: Any, tokenizer: Any, reward: Any, args: RSOConfig) -> dict:
    """What the saved set depends on: `generation` keys the candidate cache, `scoring` the rewards, `selection` the
    accepted set and pairs.

    `sampling_batch_size` is left out on purpose: a run resumed with a smaller batch (say after an out-of-memory
    error) keeps the candidates already drawn, which are valid samples of the same policy.
    """
    backend, decoding = _sampling(args)
    identity = None if backend.name == "server" else model_fingerprint(model)
    rows = generation_settings(model, tokenizer, args.num_candidates, backend, decoding, model_identity=identity)
    generation = {"prompts": Hasher.hash(prompts), "num_prompts": len(prompts), **rows}
    scoring = {"reward": _reward_identity(reward)}
    selection = {
        "num_accepted": args.num_accepted,
        "rso_beta": args.rso_beta,
        "pairing": args.pairing,
        "drop_tied_pairs": args.drop_tied_pairs,
    }
    return {
        "format_version": SAMPLES_FORMAT_VERSION,
        "generation": generation,
        "scoring": scoring,
        "selection": selection,
        "rows": rows,  # the `generation` field of the cached rows
        "generation_key": Hasher.hash(generation),
        "key": Hasher.hash([generation, scoring, selection, SAMPLES_FORMAT_VERSION]),
    }


def _read_info(samples_dir: Path) -> dict | None:
    try:
        return json.loads((samples_dir / INFO_FILENAME).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _load_tokenizer(model: Any, args: RSOConfig):
    model_id = model if isinstance(model, str) else get_config_model_id(model.config)
    revision = (args.model_init_kwargs or {}).get("revision")
    return AutoTokenizer.from_pretrained(model_id, revision=revision, trust_remote_code=args.trust_remote_code)


def _load_policy(model: Any, args: RSOConfig, quantization_config: Any) -> PreTrainedModel:
    """The sampling policy, loaded as `DPOTrainer` loads a policy path, and placed on this process's device."""
    if isinstance(model, str):
        kwargs = dict(args.model_init_kwargs or {})
        if quantization_config is not None:
            kwargs["quantization_config"] = quantization_config
        if args.distributed_state.distributed_type in ["MULTI_GPU", "DEEPSPEED"]:
            kwargs["device_map"] = None
        kwargs.setdefault("trust_remote_code", args.trust_remote_code)
        model = create_model_from_path(model, **kwargs)
    quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    if getattr(model, "hf_device_map", None) is None and not quantized:
        model.to(args.device)
    return model


def _select_and_pair(rows: list[dict], args: RSOConfig) -> DatasetDict:
    """Algorithm 1 on every prompt's rewards, then pairing of the accepted candidates, all by candidate index.

    Deterministic for a given `sampling_seed`, so every process builds the same set from the gathered rows.
    """
    generator = torch.Generator().manual_seed(args.sampling_seed)
    accepted = batched_statistical_rejection_sampling(
        [row["scores"] for row in rows], args.num_accepted, args.rso_beta, generator=generator
    )
    make_pairs = first_round_pairs if args.pairing == "first_round" else tournament_pairs
    samples, pairs = [], []
    for row, kept in zip(rows, accepted, strict=True):
        scores = row["scores"]
        prompt_pairs = []
        for a, b in make_pairs([scores[i] for i in kept], generator=generator):  # indices into `kept`
            chosen, rejected = kept[a], kept[b]
            if args.drop_tied_pairs and scores[chosen] == scores[rejected]:
                continue
            prompt_pairs.append([chosen, rejected])
            pairs.append(
                {
                    "prompt": row["prompt"],
                    "chosen": row["completions"][chosen],
                    "rejected": row["completions"][rejected],
                    "chosen_score": scores[chosen],
                    "rejected_score": scores[rejected],
                    "prompt_index": row["index"],
                    "chosen_index": chosen,
                    "rejected_index": rejected,
                }
            )
        samples.append(
            {
                "index": row["index"],
                "prompt": row["prompt"],
                "completions": row["completions"],
                "scores": scores,
                "accepted": kept,
                "pairs": prompt_pairs,
            }
        )
    pair_columns = [
        "prompt",
        "chosen",
        "rejected",
        "chosen_score",
        "rejected_score",
        "prompt_index",
        "chosen_index",
        "rejected_index",
    ]
    pairs_dataset = Dataset.from_list(pairs) if pairs else Dataset.from_dict({c: [] for c in pair_columns})
    return DatasetDict({"samples": Dataset.from_list(samples), "pairs": pairs_dataset})


def rso_sampling_stats(dataset: DatasetDict, rso_beta: float, pairing: str = "first_round") -> dict[str, float]:
    """Statistics of a sampled set (the `rso/*` keys of the first training log).

    - `rso/acceptance_rate`: mean over all candidates of exp((r − r_max)/β), r_max the prompt's best reward: the
      probability that one pass of the rejection sampler with the envelope estimated from the candidates accepts a
      candidate (1/M of textbook rejection sampling). Near 1/N: β is small and RSO keeps the top rewards; near 1: β is
      large and RSO keeps a uniform subset.
    - `rso/accepted_fraction`: accepted / generated candidates (k/N).
    - `rso/reward_all`, `rso/reward_accepted`, `rso/reward_best`: mean reward of all candidates, of the accepted ones,
      and of each prompt's best candidate (best-of-N).
    - `rso/pair_reward_gap`, `rso/pair_reward_gap_min`: mean and minimum of chosen − rejected reward over the pairs.
    - `rso/num_prompts`, `rso/num_pairs`, `rso/tied_pairs_dropped`.
    """
    samples = dataset["samples"]
    all_scores, accepted_scores, best, acceptance = [], [], [], []
    dropped = 0
    for row in samples:
        scores = torch.tensor(row["scores"], dtype=torch.float64)
        all_scores.append(scores)
        best.append(scores.max())
        acceptance.append(torch.exp((scores - scores.max()) / rso_beta))
        accepted_scores.extend(row["scores"][i] for i in row["accepted"])
        num_matches = len(row["accepted"]) // 2 if pairing == "first_round" else max(len(row["accepted"]) - 1, 0)
        dropped += num_matches - len(row["pairs"])
    all_scores = torch.cat(all_scores)
    pairs = dataset["pairs"]
    gaps = torch.tensor(pairs["chosen_score"], dtype=torch.float64) - torch.tensor(
        pairs["rejected_score"], dtype=torch.float64
    )
    nan = float("nan")
    return {
        "rso/acceptance_rate": torch.cat(acceptance).mean().item(),
        "rso/accepted_fraction": len(accepted_scores) / all_scores.numel(),
        "rso/reward_all": all_scores.mean().item(),
        "rso/reward_accepted": sum(accepted_scores) / len(accepted_scores) if accepted_scores else nan,
        "rso/reward_best": torch.stack(best).mean().item(),
        "rso/pair_reward_gap": gaps.mean().item() if len(pairs) else nan,
        "rso/pair_reward_gap_min": gaps.min().item() if len(pairs) else nan,
        "rso/num_prompts": float(len(samples)),
        "rso/num_pairs": float(len(pairs)),
        "rso/tied_pairs_dropped": float(dropped),
    }


def _save(dataset: DatasetDict, samples_dir: Path, info: dict) -> None:
    """Write the set, then its info file last, each by a rename: a crash never leaves a set that looks complete."""
    tmp = samples_dir / f".{DATASET_DIRNAME}.tmp"
    final = samples_dir / DATASET_DIRNAME
    shutil.rmtree(tmp, ignore_errors=True)
    dataset.save_to_disk(str(tmp))
    (samples_dir / INFO_FILENAME).unlink(missing_ok=True)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    info_tmp = samples_dir / f".{INFO_FILENAME}.tmp"
    info_tmp.write_text(json.dumps(info, indent=2, default=str))
    os.replace(info_tmp, samples_dir / INFO_FILENAME)


def _generate_and_score(
    model, args, prompts, reward, cache_file, tokenizer, reward_processing_class, settings, need_policy,
    quantization_config=None,
):  # fmt: skip
    """Load what is needed (the policy only when some candidates are missing and the backend runs it here), sample and
    score the prompts not yet in `cache_file`, rescore rows scored by another reward, free what was loaded here."""
    backend, _ = _sampling(args)
    policy = None
    if need_policy and backend.name != "server":
        policy = _load_policy(model, args, quantization_config)
    scorer_kwargs = {"batch_size": args.reward_batch_size}
    if isinstance(reward, str):
        scorer_kwargs["device"] = args.device
    if isinstance(reward, str | PreTrainedModel):
        scorer = as_scorer(reward, tokenizer=reward_processing_class, **scorer_kwargs)
    else:
        scorer = as_scorer(reward)
    rows = sample_and_score(
        policy,
        tokenizer,
        prompts,
        args.num_candidates,
        scorer=scorer,
        batch_size=args.sampling_batch_size,
        cache_file=cache_file,
        seed=args.sampling_seed,
        desc="RSO sampling",
        backend=backend,
        model_identity=settings["rows"]["model"],
        scorer_id=settings["scoring"]["reward"],
        **args.decoding(),
    )
    del policy, scorer  # free what was loaded here (the caller keeps the objects it passed) before training
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rows


def sample_rso_dataset(
    model: "str | PreTrainedModel",
    args: RSOConfig,
    train_dataset: Dataset,
    reward_model: "str | PreTrainedModel | Any | None" = None,
    processing_class=None,
    reward_processing_class=None,
    quantization_config=None,
) -> DatasetDict:
    """The RSO sampling stage on its own: sample, score, accept, pair, save; or load the set saved by an earlier run.

    Args:
        model: the starting (SFT) policy, a path / hub id (loaded with `args.model_init_kwargs`, as `DPOTrainer` does)
            or a loaded causal LM.
        args: an [`RSOConfig`].
        train_dataset: a `Dataset` with a `prompt` column (strings or chat-message lists); other columns are ignored.
        reward_model: a sequence-classification checkpoint path, a loaded one (pass `reward_processing_class`), or a
            callable `(prompts, completions) -> rewards`; defaults to `args.reward_model_path`.
        processing_class: the policy's tokenizer; loaded from the model's path when omitted.
        reward_processing_class: the tokenizer of a loaded reward model.
        quantization_config: applied when `model` is a path, as in `DPOTrainer`.

    Returns:
        `DatasetDict` with splits `"samples"` (one row per prompt: `index`, `prompt`, `completions`, `scores`,
        `accepted`, `pairs`; indices into `completions`) and `"pairs"` (`prompt`, `chosen`, `rejected`, their scores
        and indices). Saved under `args.samples_dir` (see the module docstring).

    The set is reused, with no generation and no scoring, when `samples_dir` holds one made from the same prompts,
    policy (fingerprint of its files or weights; with the server backend, the served model's name), tokenizer,
    reward (fingerprint, or a callable's module, name and source code), backend and settings. When only the
    acceptance or pairing settings differ, the candidate cache is reused and only steps 2–3 rerun (no model is
    loaded); when only the reward differs, the cached candidates are rescored without generating. Under several
    processes the prompts are sharded and gathered by `sample_and_score`, the main process saves, and all wait.

    Raises:
        ValueError: no reward model, an empty prompt set or prompt, a reward of the wrong shape or NaN (the batches
            already generated stay in the candidate cache and are not generated again on the next run).
    """
    if not isinstance(args, RSOConfig):
        raise TypeError(f"RSO sampling needs an RSOConfig, got {type(args).__name__}.")
    prompts = _check_prompts(train_dataset)
    reward = reward_model if reward_model is not None else args.reward_model_path
    if reward is None:
        raise ValueError("RSO needs a reward model: pass `reward_model` or set `reward_model_path` in the RSOConfig.")
    samples_dir = Path(args.samples_dir)
    tokenizer = processing_class if processing_class is not None else _load_tokenizer(model, args)
    settings = _settings(prompts, model, tokenizer, reward, args)
    state = PartialState()

    state.wait_for_everyone()  # nobody has started writing when the saved set is inspected
    info = _read_info(samples_dir)
    reuse = [info is not None and info.get("key") == settings["key"] and (samples_dir / DATASET_DIRNAME).is_dir()]
    broadcast_object_list(reuse, from_process=0)  # the main process decides, so all processes take the same path
    if reuse[0]:
        logger.info("RSO: reusing the sampled set saved in %s (no generation).", samples_dir)
        return load_from_disk(str(samples_dir / DATASET_DIRNAME))
    if info is not None:
        changed = [
            f"{group}.{key}"
            for group in ("generation", "scoring", "selection")
            for key, value in settings[group].items()
            if (info.get(group) or {}).get(key) != value
        ]
        logger.warning(
            "RSO: the set saved in %s was made with other settings (%s); sampling anew (candidates are reused when "
            "only selection settings changed, and rescored when only the reward changed).",
            samples_dir,
            ", ".join(changed) or "format",
        )

    cache_file = samples_dir / f"candidates-{settings['generation_key'][:16]}.jsonl"
    generated = cached_rows(cache_file, prompts, settings["rows"])
    scored = {i: row for i, row in generated.items() if row.get("scorer") == settings["scoring"]["reward"]}
    if len(scored) == len(prompts):  # only the selection changed: no model is loaded
        logger.info("RSO: all candidates are in %s; rerunning acceptance and pairing only.", cache_file)
        rows = [scored[i] for i in range(len(prompts))]
    else:
        rows = _generate_and_score(
            model,
            args,
            prompts,
            reward,
            cache_file,
            tokenizer,
            reward_processing_class,
            settings,
            need_policy=len(generated) < len(prompts),
            quantization_config=quantization_config,
        )

    dataset = _select_and_pair(rows, args)
    stats = rso_sampling_stats(dataset, args.rso_beta, args.pairing)
    if state.is_main_process:
        info = {**settings, "candidates_file": cache_file.name, "stats": stats}
        _save(dataset, samples_dir, info)
    state.wait_for_everyone()
    logger.info("RSO: saved %d prompts and %d pairs in %s.", len(rows), len(dataset["pairs"]), samples_dir)
    return dataset


# ----------------------------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------------------------


class RSOSampler(DPOTrainer):
    """A [`~trl.DPOTrainer`] whose preference pairs come from statistical rejection sampling (RSO).

    Give it a prompt-only `train_dataset`, the starting (SFT) policy and a reward model (a sequence-classification
    checkpoint path, a loaded one with `reward_processing_class`, or a callable `(prompts, completions) -> rewards`;
    default `args.reward_model_path`). Before `DPOTrainer.__init__` tokenises the data, [`sample_rso_dataset`]
    samples `num_candidates` completions per prompt, accepts `num_accepted` with the paper's Algorithm 1, pairs them,
    saves the set under `samples_dir` (reused on restart) and the pairs become the DPO `train_dataset`
    (`self.rso_samples` holds the whole set, `self.rso_stats` its statistics).

    No hook is overridden: the loss is TRL's `"sigmoid"` (RSO's sigmoid-norm) or `"hinge"` (hinge-norm) with
    γ = `args.beta`, and TRL's DPO metrics are logged as usual; the `rso/*` sampling statistics join the first log.
    `eval_dataset`, if given, is pairwise preference data as for `DPOTrainer`. The other arguments are
    `DPOTrainer`'s.
    """

    _tag_names = ["trl", "trl-rankalign", "rso"]
    _name = "RSO"
    _paper = {
        "title": "Statistical Rejection Sampling Improves Preference Optimization",
        "id": "2309.06657",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @inproceedings{liu2024statistical,
                title        = {{Statistical Rejection Sampling Improves Preference Optimization}},
                author       = {Tianqi Liu and Yao Zhao and Rishabh Joshi and Misha Khalman and Mohammad Saleh and Peter J. Liu and Jialu Liu},
                year         = 2024,
                booktitle    = {The Twelfth International Conference on Learning Representations, {ICLR} 2024},
                url          = {https://arxiv.org/abs/2309.06657},
            }"""),
    }

    def __init__(
        self,
        model: "str | PreTrainedModel",
        reward_model: "str | PreTrainedModel | Any | None" = None,
        ref_model: PreTrainedModel | None = None,
        args: RSOConfig | None = None,
        data_collator=None,
        train_dataset: Dataset | None = None,
        eval_dataset=None,
        processing_class=None,
        reward_processing_class=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
    ):
        if args is None:
            name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = RSOConfig(f"{name.rstrip('/').split('/')[-1]}-RSO")
        elif not isinstance(args, RSOConfig):
            raise TypeError(f"RSOSampler needs an RSOConfig, got {type(args).__name__}.")
        if train_dataset is None:
            raise ValueError("RSOSampler needs a `train_dataset` of prompts to sample from.")
        if processing_class is None:
            processing_class = _load_tokenizer(model, args)
        self.rso_samples = sample_rso_dataset(
            model,
            args,
            train_dataset,
            reward_model=reward_model,
            processing_class=processing_class,
            reward_processing_class=reward_processing_class,
            quantization_config=quantization_config,
        )
        self.rso_stats = rso_sampling_stats(self.rso_samples, args.rso_beta, args.pairing)
        pairs = self.rso_samples["pairs"]
        if len(pairs) == 0:
            raise ValueError(
                f"RSO produced no preference pairs from {len(self.rso_samples['samples'])} prompts: every pair of "
                "accepted candidates had equal rewards. Sample more candidates, raise `sampling_temperature`, or set "
                "`drop_tied_pairs=False`."
            )
        super().__init__(
            model=model,
            ref_model=ref_model,
            args=args,
            data_collator=data_collator,
            train_dataset=pairs.select_columns(["prompt", "chosen", "rejected"]),
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )
        # Averaged and cleared by the inherited `log`: the statistics appear once, in the first training log
        for key, value in self.rso_stats.items():
            self._metrics["train"][key] = [value]

    # The sampling stage alone (no reference model, no training), also reachable from the class
    sample = staticmethod(sample_rso_dataset)
