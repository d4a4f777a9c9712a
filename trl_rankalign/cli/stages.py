"""Training stages of the `trl-rankalign` CLI: one small function per stage, taking the parsed dataclasses.

Every stage parses its recipe with TRL's `TrlParser` into four dataclasses, as TRL's own `trl dpo` script does:
[`RankAlignScriptArguments`] (TRL's `ScriptArguments` plus the dataset converter), the stage's trainer config
(`SFTConfig`, `RewardConfig`, `DPOConfig`, `RankDPOConfig`, `PROConfig`, ...), TRL's `ModelConfig` (model, dtype,
PEFT/QLoRA flags) and TRL's `DatasetMixtureConfig`. A stage function mirrors `trl/scripts/dpo.py`: load the data, build
the trainer with `get_quantization_config` / `get_peft_config`, train, save, evaluate. It then writes a completion
marker ([`MARKER_FILE`]) next to the saved model, which the pipeline runner uses to skip finished stages.

Two names are special because a recipe cannot call Python:

- `model_name_or_path: tiny` is the embedded tiny default ([`trl_rankalign.tiny.tiny_model_path`]);
- `dataset_name: tiny_ranked` / `tiny_sft` (or `path:` of a `datasets:` mixture entry) are the shipped tiny
  datasets, with splits `train` (270 rows) and `test` (30 rows).

A `dataset_name` that is a local `save_to_disk` folder (or the output folder of `trl-rankalign rank`, whose `ranked/`
it reads) is loaded with `load_from_disk`; a saved single `Dataset` becomes the split `dataset_train_split`.

The registry [`STAGES`] maps a stage name to its dataclasses and run function, as import strings resolved lazily, so
adding a stage is one entry and importing this module stays cheap.
"""

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import ScriptArguments


logger = logging.getLogger(__name__)

MARKER_FILE = "rankalign_stage.json"
TINY_MODEL = "tiny"
TINY_DATASETS = {"tiny_ranked": "RANKED_PATH", "tiny_sft": "SFT_PATH"}  # name -> file attribute of `tiny`
TINY_PROMPTS = "tiny_prompts"  # the distinct prompts of tiny_ranked (RSO's prompt set); `dataset_name` only
_TINY_TEST_SIZE = 30  # rows held out as the `test` split of the tiny datasets (as `tiny.tiny_ranked_dataset`)


@dataclass
class RankAlignScriptArguments(ScriptArguments):
    r"""
    TRL's [`~trl.ScriptArguments`] plus the converter that turns the loaded dataset into the stage's format.

    Parameters:
        dataset_converter (`str`, *optional*):
            Name of a converter in `trl_rankalign.data.converters.CONVERTERS` (`"ranked"`, `"pairwise"`,
            `"ultrafeedback"`, `"ultrafeedback_binarized"`, `"summarize_from_feedback"`, `"hh_rlhf"`,
            `"group_pairwise"`, `"alma_r"`), applied to every split and validated as ranked data; or any function as
            an import string `"module:function"` (e.g. `"trl_rankalign.data.translation:from_alma_parallel"`),
            called as `function(split, **converter_kwargs)` and used as it returns (no ranked validation: it may
            produce SFT or prompt rows). `None`: the data is used as loaded (the listwise trainers accept ranked and
            TRL pairwise data). Ranked output is then adapted to the stage: `sft` trains on each list's top
            completion, `reward`, `dpo` and `cpo` on (best, worst) pairs, `raft` and `rloo` on its prompts.
        converter_kwargs (`dict` or `str`, *optional*):
            Keyword arguments of the converter, e.g. `{"score": "overall", "conversational": true}`; a JSON string on
            the command line.
    """

    dataset_converter: str | None = field(
        default=None,
        metadata={"help": "Converter (trl_rankalign.data.converters.CONVERTERS key) applied to every split."},
    )
    converter_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments of the converter (a JSON string on the command line)."},
    )

    def __post_init__(self):
        if isinstance(self.converter_kwargs, str):
            self.converter_kwargs = json.loads(self.converter_kwargs)
        if self.dataset_converter is not None:
            from .data.converters import CONVERTERS

            if ":" in self.dataset_converter:  # an import string: resolved now, so a stale recipe fails early
                _import_callable(self.dataset_converter, "dataset_converter")
            elif self.dataset_converter not in CONVERTERS:
                raise ValueError(
                    f"dataset_converter={self.dataset_converter!r} is not a converter; valid: {sorted(CONVERTERS)} "
                    "or a 'module:function' import string"
                )
        elif self.converter_kwargs:
            raise ValueError("converter_kwargs is set but dataset_converter is not.")


@dataclass(frozen=True)
class Stage:
    """A CLI stage: import strings (`"module:attribute"`) of its dataclasses and run function, resolved lazily."""

    help: str
    run: str
    config: str
    script_args: str = "trl_rankalign.stages:RankAlignScriptArguments"
    model_args: str = "trl:ModelConfig"
    dataset_args: str = "trl:DatasetMixtureConfig"

    def dataclass_types(self) -> tuple[type, ...]:
        return tuple(
            import_string(name) for name in (self.script_args, self.config, self.model_args, self.dataset_args)
        )

    def run_function(self):
        return import_string(self.run)


def import_string(name: str) -> Any:
    module, _, attribute = name.partition(":")
    import importlib

    return getattr(importlib.import_module(module), attribute)


def _import_callable(name: str, key: str):
    """The callable named by the import string `name` (`"module:function"`); `ValueError` naming the recipe `key`."""
    module, _, attribute = name.partition(":")
    if not module or not attribute:
        raise ValueError(f"{key}={name!r} must be an import string 'module:function'.")
    try:
        function = import_string(name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"Cannot import {key}={name!r}: {error}") from None
    if not callable(function):
        raise ValueError(f"{key}={name!r} is not callable.")
    return function


@dataclass
class RewardScriptArguments(RankAlignScriptArguments):
    r"""
    [`RankAlignScriptArguments`] plus the reward of an online stage (`rloo`): a reward model and/or a Python function.

    Parameters:
        reward_model_path (`str`, *optional*):
            Sequence-classification reward model (a folder, e.g. the `reward` stage's output, or a hub id).
        reward_function (`str`, *optional*):
            A reward callable as an import string `"module:function"` with TRL's reward-function signature
            `(prompts, completions, **kwargs) -> list[float]`, e.g. `"trl_rankalign.tiny_language:reward_fn"`.
            With both set, TRL sums the two rewards (weighted by `reward_weights`).
    """

    reward_model_path: str | None = field(
        default=None, metadata={"help": "Reward model checkpoint (folder or hub id)."}
    )
    reward_function: str | None = field(
        default=None, metadata={"help": "Reward callable as 'module:function' (TRL's reward-function signature)."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.reward_model_path = _unset(self.reward_model_path)
        self.reward_function = _unset(self.reward_function)
        if self.reward_function is not None:
            _import_callable(self.reward_function, "reward_function")


def _unset(value: str | None) -> str | None:
    """`None` for an option switched off on the command line (`--reward_function null`; YAML `null` is already None)."""
    return None if value is None or value.strip().lower() in ("", "none", "null") else value


# Stage name -> dataclasses and run function. To add one, add an entry (and a tiny recipe under recipes/tiny/).
STAGES: dict[str, Stage] = {
    "sft": Stage("Supervised fine-tuning (TRL's SFTTrainer)", "trl_rankalign.stages:run_sft", "trl:SFTConfig"),
    "reward": Stage("Reward model (TRL's RewardTrainer)", "trl_rankalign.stages:run_reward", "trl:RewardConfig"),
    "dpo": Stage("Pairwise DPO baseline (TRL's DPOTrainer)", "trl_rankalign.stages:run_dpo", "trl:DPOConfig"),
    "rankdpo": Stage(
        "Listwise DPO: Plackett-Luce or LiPO (RankDPOTrainer)",
        "trl_rankalign.stages:run_rankdpo",
        "trl_rankalign.rank_dpo_config:RankDPOConfig",
    ),
    "pro": Stage(
        "Preference Ranking Optimization (PROTrainer)",
        "trl_rankalign.stages:run_pro",
        "trl_rankalign.pro_config:PROConfig",
    ),
    "rso": Stage(
        "RSO: rejection sampling from the SFT policy, then DPO on the sampled pairs (RSOSampler)",
        "trl_rankalign.stages:run_rso",
        "trl_rankalign.rso_config:RSOConfig",
    ),
    "sample": Stage(
        "RSO's sampling step alone: sample, score, accept, pair, save to samples_dir (no training)",
        "trl_rankalign.stages:run_sample",
        "trl_rankalign.rso_config:RSOConfig",
    ),
    "rrhf": Stage(
        "RRHF: hinge on mis-ordered length-normalised log-probs + NLL of the best (RRHFTrainer)",
        "trl_rankalign.stages:run_rrhf",
        "trl_rankalign.rrhf_config:RRHFConfig",
    ),
    "slic": Stage(
        "SLiC-HF: hinge on the log-prob gap of every ordered pair + NLL of the best (SLiCTrainer)",
        "trl_rankalign.stages:run_slic",
        "trl_rankalign.slic_config:SLiCConfig",
    ),
    "cpo": Stage(
        "CPO on best-vs-worst pairs, ALMA-R's baseline (TRL's experimental CPOTrainer)",
        "trl_rankalign.stages:run_cpo",
        "trl.experimental.cpo:CPOConfig",
    ),
    "raft": Stage(
        "RAFT: rounds of sample K -> keep the best -> SFT (train_raft)",
        "trl_rankalign.stages:run_raft",
        "trl_rankalign.raft:RAFTConfig",
    ),
    "rloo": Stage(
        "Online RL (RLHF) with REINFORCE leave-one-out (TRL's RLOOTrainer)",
        "trl_rankalign.stages:run_rloo",
        "trl:RLOOConfig",
        script_args="trl_rankalign.stages:RewardScriptArguments",
    ),
    # `rank` (score candidates into a ranked dataset) is a plain command of the CLI, not a stage.
}


# --------------------------------------------------------------------------------------------------------- helpers
def resolve_model_path(name_or_path: str | None) -> str | None:
    """`"tiny"` is the embedded tiny default (built and cached on first use); anything else is returned as is."""
    if name_or_path == TINY_MODEL:
        from .tiny import tiny_model_path

        return tiny_model_path()
    return name_or_path


def _tiny_dataset(name: str):
    from datasets import DatasetDict

    from . import tiny

    if name == TINY_PROMPTS:
        from .rso_sampler import tiny_prompt_dataset

        return DatasetDict(train=tiny_prompt_dataset("train"), test=tiny_prompt_dataset("test"))
    load = tiny.tiny_ranked_dataset if name == "tiny_ranked" else tiny.tiny_sft_dataset
    return DatasetDict(train=load("train", _TINY_TEST_SIZE), test=load("test", _TINY_TEST_SIZE))


def load_stage_dataset(script_args: RankAlignScriptArguments, dataset_args):
    """Load the recipe's data as TRL's scripts do (`datasets:` mixture first, else `dataset_name`), then convert.

    Returns a `DatasetDict`; the converter named by `dataset_converter` is applied to each split.
    """
    from datasets import load_dataset
    from trl import get_dataset

    from . import tiny

    if dataset_args.datasets:
        if script_args.dataset_name:
            logger.warning("Both `datasets` and `dataset_name` are set: `datasets` is used, `dataset_name` ignored.")
        for entry in dataset_args.datasets:  # the tiny names become TRL's json loader on the shipped file
            if entry.path in TINY_DATASETS:
                entry.data_files = str(getattr(tiny, TINY_DATASETS[entry.path]))
                entry.path = "json"
        dataset = get_dataset(dataset_args)
    elif script_args.dataset_name in (*TINY_DATASETS, TINY_PROMPTS):
        dataset = _tiny_dataset(script_args.dataset_name)
    elif script_args.dataset_name and saved_dataset_folder(script_args.dataset_name) is not None:
        dataset = load_saved_dataset(saved_dataset_folder(script_args.dataset_name), script_args.dataset_train_split)
    elif script_args.dataset_name:
        dataset = load_dataset(
            script_args.dataset_name, name=script_args.dataset_config, streaming=script_args.dataset_streaming
        )
    else:
        raise ValueError("Either `datasets` or `dataset_name` must be provided.")

    if script_args.dataset_converter is not None:
        from .data.converters import convert

        kwargs = script_args.converter_kwargs or {}
        name = script_args.dataset_converter
        function = _import_callable(name, "dataset_converter") if ":" in name else None
        for split in list(dataset):
            dataset[split] = (
                function(dataset[split], **kwargs) if function else convert(dataset[split], name, **kwargs)
            )
    return dataset


def is_saved_dataset(path: str | os.PathLike) -> bool:
    """Whether `path` is a local folder written by `datasets`' `save_to_disk` (a `Dataset` or a `DatasetDict`)."""
    folder = Path(path)
    return folder.is_dir() and (
        (folder / "dataset_dict.json").is_file()
        or ((folder / "state.json").is_file() and (folder / "dataset_info.json").is_file())
    )


def saved_dataset_folder(path: str | os.PathLike) -> Path | None:
    """The `save_to_disk` folder that `dataset_name` names: the folder itself, or the `ranked/` folder inside the
    output folder of `trl-rankalign rank`; `None` when it is neither (a hub id, a data file, ...)."""
    for folder in (Path(path), Path(path) / "ranked"):
        if is_saved_dataset(folder):
            return folder
    return None


def load_saved_dataset(path: str | os.PathLike, train_split: str = "train"):
    """A `save_to_disk` folder as a `DatasetDict`: a saved `DatasetDict` as is, a saved `Dataset` (e.g. the `ranked/`
    folder of `trl-rankalign rank`) as the single split `train_split`."""
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(str(path))
    return dataset if isinstance(dataset, DatasetDict) else DatasetDict({train_split: dataset})


def _columns(dataset) -> list[str]:
    if dataset.column_names is not None:
        return list(dataset.column_names)
    return list(next(iter(dataset)).keys())


def ranked_to_pairwise(dataset):
    """Ranked rows to TRL pairwise rows `(prompt, chosen, rejected)`: the best against the worst completion.

    Fully tied lists have no preference and are removed (the count is logged). Non-ranked data is returned as is.
    """
    from .data.schema import is_ranked, rank_order

    columns = _columns(dataset)
    if not is_ranked(columns):
        return dataset

    def is_untied(example):
        return max(example["scores"]) > min(example["scores"])

    def best_worst(example):
        order = rank_order(example["scores"])
        completions = example["completions"]
        return {"prompt": example["prompt"], "chosen": completions[order[0]], "rejected": completions[order[-1]]}

    total = len(dataset) if hasattr(dataset, "__len__") else None
    dataset = dataset.filter(is_untied)
    if total is not None and total != len(dataset):
        logger.warning("ranked_to_pairwise: removed %d of %d fully tied lists.", total - len(dataset), total)
    return dataset.map(best_worst, remove_columns=columns)


def prompts_of(dataset):
    """Prompt-only rows `{"prompt"}` of ranked, pairwise, SFT or prompt rows, each distinct prompt once (first-seen
    order): the prompt set of the online stages (`raft`, `rloo`). A streamed dataset keeps its repeats."""
    columns = _columns(dataset)
    if "prompt" not in columns:
        raise ValueError(
            f"The online stages read the prompts of the recipe's data, but it has no 'prompt' column ({columns}); "
            "implicit-prompt pairs need an explicit prompt (dataset_converter: pairwise)."
        )
    dataset = dataset.select_columns(["prompt"])
    if not hasattr(dataset, "__len__"):
        return dataset
    seen, keep = set(), []
    for index, prompt in enumerate(dataset["prompt"]):
        key = json.dumps(prompt, sort_keys=True, ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            keep.append(index)
    if len(keep) != len(dataset):
        logger.info("prompts_of: %d distinct prompts out of %d rows.", len(keep), len(dataset))
    return dataset.select(keep)


def _to_sft(dataset):
    from .data.converters import top_ranked_completions
    from .data.schema import is_ranked

    return top_ranked_completions(dataset) if is_ranked(_columns(dataset)) else dataset


def _model_init_kwargs(training_args, model_args) -> None:
    """As TRL's scripts: revision, remote code, attention and dtype from `ModelConfig` go to `model_init_kwargs`."""
    kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    if training_args.model_init_kwargs is not None:
        kwargs.update(training_args.model_init_kwargs)
    training_args.model_init_kwargs = kwargs


def _build_and_train(
    stage, trainer_class, script_args, training_args, model_args, dataset_args, adapt=None, logged_keys=()
) -> dict:
    """The body of every stage: data, trainer, train, save, final evaluation, completion marker.

    `trainer_class` is called as `trainer_class(model=, args=, train_dataset=, eval_dataset=, quantization_config=,
    peft_config=)` (a class or a factory); `logged_keys` are log keys whose first and last values join the summary.
    """
    from trl import get_peft_config, get_quantization_config

    started = time.time()
    model_args.model_name_or_path = resolve_model_path(model_args.model_name_or_path)
    _model_init_kwargs(training_args, model_args)
    dataset = load_stage_dataset(script_args, dataset_args)
    if adapt is not None:
        for split in list(dataset):
            dataset[split] = adapt(dataset[split])
    eval_dataset = None
    if training_args.eval_strategy != "no":
        if script_args.dataset_test_split not in dataset:
            raise ValueError(
                f"eval_strategy={training_args.eval_strategy!r} needs the split {script_args.dataset_test_split!r}, "
                f'but the data has {list(dataset)}: set `dataset_test_split` or `eval_strategy: "no"`.'
            )
        eval_dataset = dataset[script_args.dataset_test_split]
    trainer = trainer_class(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=eval_dataset,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    if getattr(script_args, "ignore_bias_buffers", False):
        import torch

        trainer.model._ddp_params_and_buffers_to_ignore = [
            name for name, buffer in trainer.model.named_buffers() if buffer.dtype == torch.bool
        ]
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    eval_metrics = {}
    if eval_dataset is not None:
        last = [e for e in trainer.state.log_history if "eval_loss" in e]
        if last and last[-1].get("step") == trainer.state.global_step:
            eval_metrics = {k: v for k, v in last[-1].items() if k.startswith("eval_")}
        else:
            eval_metrics = trainer.evaluate()
        trainer.save_metrics("eval", eval_metrics)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    summary = finish(
        stage, trainer, training_args, model_args, eval_metrics, time.time() - started, logged_keys=logged_keys
    )
    # Everyone is done before any process tears the group down: a gloo peer that exits while another is still in the
    # last collective can leave that one waiting forever (seen once in a 2-process CPU run)
    trainer.accelerator.wait_for_everyone()
    if hasattr(trainer, "end"):  # transformers >= 5.18: finishes the trackers (W&B), destroys the process group
        trainer.end()
    return summary


def finish(stage: str, trainer, training_args, model_args, eval_metrics: dict, seconds: float, logged_keys=()) -> dict:
    """Print the metrics summary and write the completion marker (main process only); return the summary."""
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    logged = {}
    for key in logged_keys:
        values = [entry[key] for entry in trainer.state.log_history if key in entry]
        if values:
            logged[f"first_{key}"], logged[f"last_{key}"] = values[0], values[-1]
    summary = {
        "stage": stage,
        "model_name_or_path": model_args.model_name_or_path,
        "output_dir": str(Path(training_args.output_dir).resolve()),
        "global_step": trainer.state.global_step,
        "num_processes": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type.value),
        "zero_stage": getattr(trainer.accelerator.state.deepspeed_plugin, "zero_stage", None),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        **logged,
        **eval_metrics,
        "seconds": round(seconds, 1),
    }
    if trainer.accelerator.is_main_process:
        print_summary(summary)
        Path(training_args.output_dir, MARKER_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def print_summary(summary: dict, title: str | None = None) -> None:
    print(f"[trl-rankalign] {title or summary.get('stage') or 'stage'} metrics:")
    for key, value in summary.items():
        print(f"  {key:40s} {value:.4f}" if isinstance(value, float) else f"  {key:40s} {value}")


def is_finished(output_dir: str | os.PathLike) -> bool:
    """A stage is finished when its output_dir holds the completion marker and what the stage saved: a model (full
    or adapter), or for `sample` the dataset named by the marker's `samples_dir`."""
    path = Path(output_dir)
    if not (path / MARKER_FILE).is_file():
        return False
    if any((path / name).is_file() for name in ("config.json", "adapter_config.json")):
        return True
    samples_dir = json.loads((path / MARKER_FILE).read_text(encoding="utf-8")).get("samples_dir")
    return samples_dir is not None and Path(samples_dir, "dataset").is_dir()


# ---------------------------------------------------------------------------------------------------------- stages
def run_sft(script_args, training_args, model_args, dataset_args) -> dict:
    from trl import SFTTrainer

    return _build_and_train("sft", SFTTrainer, script_args, training_args, model_args, dataset_args, adapt=_to_sft)


def run_reward(script_args, training_args, model_args, dataset_args) -> dict:
    from trl import RewardTrainer

    return _build_and_train(
        "reward", RewardTrainer, script_args, training_args, model_args, dataset_args, adapt=ranked_to_pairwise
    )


def run_dpo(script_args, training_args, model_args, dataset_args) -> dict:
    from trl import DPOTrainer

    return _build_and_train(
        "dpo", DPOTrainer, script_args, training_args, model_args, dataset_args, adapt=ranked_to_pairwise
    )


def run_rankdpo(script_args, training_args, model_args, dataset_args) -> dict:
    from .rank_dpo_trainer import RankDPOTrainer

    return _build_and_train("rankdpo", RankDPOTrainer, script_args, training_args, model_args, dataset_args)


def run_pro(script_args, training_args, model_args, dataset_args) -> dict:
    from .pro_trainer import PROTrainer

    return _build_and_train("pro", PROTrainer, script_args, training_args, model_args, dataset_args)


def run_rso(script_args, training_args, model_args, dataset_args) -> dict:
    """RSO: prompts from the recipe's data (ranked or pairwise rows give their prompts), pairs from the sampler."""
    from .rso_sampler import RSOSampler

    return _build_and_train("rso", RSOSampler, script_args, training_args, model_args, dataset_args, adapt=_rso_data)


def _rso_data(dataset):
    """Ranked rows become pairwise (the eval split of RSO is pairwise preference data; the sampler reads prompts)."""
    return ranked_to_pairwise(dataset)


def run_sample(script_args, training_args, model_args, dataset_args) -> dict:
    """RSO's sampling step alone: the sampled set is saved under `samples_dir`, and a later `rso` run reuses it."""
    from trl import get_quantization_config

    from .rso_sampler import RSOSampler, rso_sampling_stats

    started = time.time()
    model_args.model_name_or_path = resolve_model_path(model_args.model_name_or_path)
    _model_init_kwargs(training_args, model_args)
    dataset = load_stage_dataset(script_args, dataset_args)
    samples = RSOSampler.sample(
        model_args.model_name_or_path,
        training_args,
        _rso_data(dataset[script_args.dataset_train_split]),
        quantization_config=get_quantization_config(model_args),
    )
    summary = {
        "stage": "sample",
        "model_name_or_path": model_args.model_name_or_path,
        "output_dir": str(Path(training_args.output_dir).resolve()),
        "samples_dir": str(Path(training_args.samples_dir).resolve()),
        "prompts": len(samples["samples"]),
        "pairs": len(samples["pairs"]),
        **rso_sampling_stats(samples, training_args.rso_beta, training_args.pairing),
        "seconds": round(time.time() - started, 1),
    }
    from accelerate import PartialState

    if PartialState().is_main_process:
        print_summary(summary)
        Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
        Path(training_args.output_dir, MARKER_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_rrhf(script_args, training_args, model_args, dataset_args) -> dict:
    from .rrhf_trainer import RRHFTrainer

    return _build_and_train("rrhf", RRHFTrainer, script_args, training_args, model_args, dataset_args)


def run_slic(script_args, training_args, model_args, dataset_args) -> dict:
    from .slic_trainer import SLiCTrainer

    return _build_and_train("slic", SLiCTrainer, script_args, training_args, model_args, dataset_args)


def _quantized_model_init(training_args, quantization_config) -> None:
    """For trainers without a `quantization_config` argument: quantized loading through `model_init_kwargs`, placed on
    this process's device as TRL's scripts do."""
    if quantization_config is None:
        return
    from trl import get_kbit_device_map

    training_args.model_init_kwargs = {
        **(training_args.model_init_kwargs or {}),
        "quantization_config": quantization_config,
        "device_map": get_kbit_device_map(),
    }


def _cpo_trainer(model, args, train_dataset, eval_dataset, quantization_config, peft_config):
    """TRL's experimental `CPOTrainer`, which takes no `quantization_config` and loads with `device_map="auto"` unless
    told otherwise: `None` here (the Trainer places the model; "auto" would split it over all GPUs of every rank)."""
    from transformers import AutoTokenizer
    from trl.experimental.cpo import CPOTrainer

    args.model_init_kwargs = {"device_map": None, **(args.model_init_kwargs or {})}
    _quantized_model_init(args, quantization_config)
    # CPOTrainer builds its collator before it sets a missing pad token (LLaMA-2, ALMA): set it first, as TRL does.
    tokenizer = AutoTokenizer.from_pretrained(
        model, revision=args.model_init_kwargs.get("revision"), trust_remote_code=args.trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return CPOTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def run_cpo(script_args, training_args, model_args, dataset_args) -> dict:
    """CPO (Xu et al. 2024) on the best-vs-worst pair of each ranked list, as ALMA-R trains on its triplets."""
    return _build_and_train(
        "cpo", _cpo_trainer, script_args, training_args, model_args, dataset_args, adapt=ranked_to_pairwise
    )


def _rloo_reward_funcs(script_args) -> list:
    funcs = []
    if script_args.reward_model_path:
        funcs.append(resolve_model_path(script_args.reward_model_path))
    if script_args.reward_function:
        funcs.append(_import_callable(script_args.reward_function, "reward_function"))
    if not funcs:
        raise ValueError("The rloo stage needs a reward: set `reward_model_path` and/or `reward_function`.")
    return funcs


def run_rloo(script_args, training_args, model_args, dataset_args) -> dict:
    """Online RL with TRL's `RLOOTrainer` on the distinct prompts of the recipe's data (ranked, pairwise, SFT or
    prompt rows), rewarded by the reward model and/or the Python reward function of the recipe."""
    import functools

    from trl import RLOOTrainer

    trainer_class = functools.partial(RLOOTrainer, reward_funcs=_rloo_reward_funcs(script_args))
    return _build_and_train(
        "rloo",
        trainer_class,
        script_args,
        training_args,
        model_args,
        dataset_args,
        adapt=prompts_of,
        logged_keys=("reward",),
    )


def run_raft(script_args, training_args, model_args, dataset_args) -> dict:
    """RAFT ([`trl_rankalign.raft.train_raft`]) on the distinct prompts of the recipe's data, rewarded by
    `reward_model_path` or `reward_function`; the final policy is saved to `output_dir` with the completion marker."""
    from datasets import load_from_disk
    from trl import get_peft_config, get_quantization_config

    from .generation import read_jsonl
    from .raft import train_raft

    started = time.time()
    training_args.reward_model_path = _unset(training_args.reward_model_path)
    training_args.reward_function = _unset(training_args.reward_function)
    if bool(training_args.reward_model_path) == bool(training_args.reward_function):
        raise ValueError("The raft stage needs exactly one reward: `reward_model_path` or `reward_function`.")
    if training_args.reward_function:
        reward = _import_callable(training_args.reward_function, "reward_function")
    else:
        reward = resolve_model_path(training_args.reward_model_path)
    model_args.model_name_or_path = resolve_model_path(model_args.model_name_or_path)
    _model_init_kwargs(training_args, model_args)
    _quantized_model_init(training_args, get_quantization_config(model_args))
    dataset = load_stage_dataset(script_args, dataset_args)
    prompts = prompts_of(dataset[script_args.dataset_train_split])["prompt"]
    train_raft(
        model_args.model_name_or_path, prompts, training_args, reward=reward, peft_config=get_peft_config(model_args)
    )
    output = Path(training_args.output_dir)
    sampled, selected = [], []
    for index in range(training_args.num_rounds):
        scores = [s for row in read_jsonl(output / f"round_{index}" / "samples.jsonl") for s in row["scores"]]
        sampled.append(sum(scores) / len(scores))
        best = load_from_disk(str(output / f"round_{index}" / "best"))
        selected.append(sum(best["score"]) / len(best))
    summary = {
        "stage": "raft",
        "model_name_or_path": model_args.model_name_or_path,
        "output_dir": str(output.resolve()),
        "prompts": len(prompts),
        "num_rounds": training_args.num_rounds,
        "num_samples": training_args.num_samples,
        "sampled_reward_per_round": sampled,
        "selected_reward_per_round": selected,
        "seconds": round(time.time() - started, 1),
    }
    from accelerate import PartialState

    if PartialState().is_main_process:
        print_summary(summary)
        Path(output, MARKER_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
