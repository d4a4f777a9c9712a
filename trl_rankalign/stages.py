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
            `"group_pairwise"`), applied to every split. `None`: the data is used as loaded (the listwise trainers
            accept ranked and TRL pairwise data). Ranked output is then adapted to the stage: `sft` trains on each
            list's top completion, `reward` and `dpo` on (best, worst) pairs.
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

            if self.dataset_converter not in CONVERTERS:
                raise ValueError(
                    f"dataset_converter={self.dataset_converter!r} is not a converter; valid: {sorted(CONVERTERS)}"
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
    # Later: "raft", "rloo", "rank".
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
    elif script_args.dataset_name:
        dataset = load_dataset(
            script_args.dataset_name, name=script_args.dataset_config, streaming=script_args.dataset_streaming
        )
    else:
        raise ValueError("Either `datasets` or `dataset_name` must be provided.")

    if script_args.dataset_converter is not None:
        from .data.converters import convert

        kwargs = script_args.converter_kwargs or {}
        for split in list(dataset):
            dataset[split] = convert(dataset[split], script_args.dataset_converter, **kwargs)
    return dataset


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


def _build_and_train(stage, trainer_class, script_args, training_args, model_args, dataset_args, adapt=None) -> dict:
    """The body of every stage: data, trainer, train, save, final evaluation, completion marker."""
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
    summary = finish(stage, trainer, training_args, model_args, eval_metrics, time.time() - started)
    if hasattr(trainer, "end"):  # transformers >= 5.18: finishes the trackers (W&B), destroys the process group
        trainer.end()
    return summary


def finish(stage: str, trainer, training_args, model_args, eval_metrics: dict, seconds: float) -> dict:
    """Print the metrics summary and write the completion marker (main process only); return the summary."""
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
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
