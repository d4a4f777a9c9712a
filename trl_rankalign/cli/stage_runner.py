"""The body every training stage shares: data, trainer, train, save, evaluate, summary and completion marker.

The marker ([`MARKER_FILE`]) is written next to the saved model; the pipeline runner uses it to skip finished stages.
"""

import json
import logging
import os
import time
from pathlib import Path

from .stage_data import load_stage_dataset, resolve_model_path


logger = logging.getLogger(__name__)

MARKER_FILE = "rankalign_stage.json"


def model_init_kwargs(training_args, model_args) -> None:
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


def build_and_train(
    stage, trainer_class, script_args, training_args, model_args, dataset_args, adapt=None, logged_keys=()
) -> dict:
    """The body of every stage: data, trainer, train, save, final evaluation, completion marker.

    `trainer_class` is called as `trainer_class(model=, args=, train_dataset=, eval_dataset=, quantization_config=,
    peft_config=)` (a class or a factory); `logged_keys` are log keys whose first and last values join the summary.
    """
    from trl import get_peft_config, get_quantization_config

    started = time.time()
    model_args.model_name_or_path = resolve_model_path(model_args.model_name_or_path)
    model_init_kwargs(training_args, model_args)
    dataset = load_stage_dataset(script_args, dataset_args)
    if adapt is not None:
        for split in list(dataset):
            dataset[split] = adapt(dataset[split])
    eval_dataset = None
    if training_args.eval_strategy != "no" and script_args.dataset_test_split not in dataset:
        # e.g. `rank` output (one `train` split) given to a recipe that evaluates: train, and say why nothing is
        # evaluated, rather than stop after the data (and perhaps hours of ranking) is ready.
        logger.warning(
            "eval_strategy=%r but the data has no %r split (splits: %s): training without evaluation. Pass data with "
            "that split, or set `dataset_test_split`.",
            str(training_args.eval_strategy),
            script_args.dataset_test_split,
            list(dataset),
        )
        training_args.eval_strategy = "no"
        training_args.do_eval = False
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
