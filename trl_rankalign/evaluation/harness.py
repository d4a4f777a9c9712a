"""Benchmarks from EleutherAI's lm-evaluation-harness (extra `harness`) on saved checkpoints.

[`run_harness`] calls the harness's own `simple_evaluate` with its Hugging Face backend (`model="hf"`) on a local
checkpoint, so the scores are the harness's, not a re-implementation. Tasks are harness task names or groups (the Open
LLM Leaderboard v2 is the group `leaderboard`; [`OPEN_LLM_LEADERBOARD_V1`] names v1's six tasks with their shot
counts), or tasks of your own from YAML files in `include_path`. Results go to `<output_dir>/harness/<name>.json`,
next to the other evaluations.
"""

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..sampling.answers import model_name_from_path


__all__ = ["OPEN_LLM_LEADERBOARD_V1", "run_harness"]

# Open LLM Leaderboard v1: task -> number of few-shot examples (its published settings)
OPEN_LLM_LEADERBOARD_V1 = {
    "arc_challenge": 25,
    "hellaswag": 10,
    "mmlu": 5,
    "truthfulqa_mc2": 0,
    "winogrande": 5,
    "gsm8k": 5,
}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def run_harness(
    checkpoint: str | os.PathLike,
    tasks: Sequence[str],
    output_dir: str | os.PathLike,
    num_fewshot: int | None = None,
    batch_size: int | str = 8,
    limit: int | float | None = None,
    include_path: str | os.PathLike | None = None,
    device: str | None = None,
    dtype: str = "auto",
    name: str | None = None,
) -> dict[str, dict]:
    """Evaluate `checkpoint` on `tasks` with lm-evaluation-harness; return `{task: metrics}` and write them (with the
    harness's configs and versions) to `<output_dir>/harness/<name>.json`.

    `tasks` may contain `"open_llm_leaderboard_v1"`, which runs v1's six tasks each with its own shot count
    (`num_fewshot` is then ignored for them). `limit` caps the examples per task (for a smoke run).
    """
    try:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise ImportError(
            "`eval harness` needs lm-evaluation-harness: pip install 'trl-rankalign[harness]'."
        ) from error
    if not tasks:
        raise ValueError("Name at least one harness task (e.g. --tasks hellaswag, or open_llm_leaderboard_v1).")
    path = Path(os.path.expanduser(str(checkpoint)))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"Checkpoint {str(checkpoint)!r} has no config.json: not a saved model folder.")
    task_manager = TaskManager(include_path=str(include_path) if include_path is not None else None)
    runs = []  # (tasks, shots): v1 tasks each with its own shot count, the rest together
    plain = [t for t in tasks if t != "open_llm_leaderboard_v1"]
    if plain:
        runs.append((plain, num_fewshot))
    if "open_llm_leaderboard_v1" in tasks:
        runs += [([task], shots) for task, shots in OPEN_LLM_LEADERBOARD_V1.items()]
    unknown = [t for t in plain if t not in task_manager.all_tasks]
    if unknown:
        raise ValueError(f"Unknown harness tasks {unknown}; add `include_path` for tasks of your own.")

    results, configs, versions = {}, {}, {}
    for run_tasks, shots in runs:
        output = simple_evaluate(
            model="hf",
            model_args={"pretrained": str(path), "dtype": dtype},
            tasks=list(run_tasks),
            num_fewshot=shots,
            batch_size=batch_size,
            limit=limit,
            device=device,
            task_manager=task_manager,
            log_samples=False,
        )
        results.update(output["results"])
        configs.update(output.get("configs", {}))
        versions.update(output.get("versions", {}))
    name = name or model_name_from_path(path)
    target = Path(output_dir) / "harness" / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    record = {"checkpoint": str(path), "tasks": list(tasks), "num_fewshot": num_fewshot, "limit": limit}
    record.update(results=results, configs=configs, versions=versions)
    target.write_text(json.dumps(_jsonable(record), indent=2) + "\n")
    return _jsonable(results)
