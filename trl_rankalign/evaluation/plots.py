"""PNG training curves from a run's `trainer_state.json`, for users without W&B.

Reads `log_history` (the entries `Trainer` logs: train metrics under their own names, evaluation metrics prefixed
with `eval_`) and draws, one PNG each, over steps: reward margins, the mean implicit reward at every rank
(`rewards/rank_k`), ranking accuracy (`ranking/pairwise_accuracy`, `rewards/accuracies`), and Kendall's tau (with
NDCG when logged). Train curves are solid, eval curves dashed. Figures are drawn with matplotlib's object API on the
Agg canvas: no display and no global pyplot state is touched.
"""

import json
import os
import re
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..sampling.jsonl import read_jsonl


__all__ = ["PLOTS", "ROUND_PLOTS", "load_log_history", "plot_rounds", "plot_training_curves"]

# file stem -> (title, y label, metric keys without the eval_ prefix; a regex when it starts with "^")
PLOTS = {
    "loss": ("Loss", "loss", ["loss"]),  # every run has it (SFT and reward runs have nothing else to plot)
    "reward_margins": ("Reward margin (top - bottom ranked)", "implicit reward", ["rewards/margins"]),
    "rank_rewards": ("Mean implicit reward per rank", "implicit reward", [r"^rewards/rank_(\d+)$"]),
    "ranking_accuracy": (
        "Ranking accuracy",
        "accuracy",
        ["ranking/pairwise_accuracy", "rewards/accuracies"],
    ),
    "kendall_tau": ("Kendall's tau (and NDCG)", "correlation", ["ranking/kendall_tau", "ranking/ndcg"]),
}


def _state_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        if (path / "trainer_state.json").is_file():
            return path / "trainer_state.json"
        checkpoints = sorted(path.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name[11:]))
        if checkpoints:
            return checkpoints[-1]
        raise FileNotFoundError(f"No trainer_state.json in {str(path)!r} or its checkpoint-* folders.")
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist.")
    return path


def load_log_history(trainer_state: str | os.PathLike | dict) -> list[dict]:
    """`log_history` of a `trainer_state.json` (a file, a run folder, whose latest `checkpoint-*` is used when the
    folder has none itself, or the loaded dict). Raises `ValueError` when it is missing or empty."""
    if isinstance(trainer_state, dict):
        state, name = trainer_state, "the trainer state"
    else:
        file = _state_file(trainer_state)
        state, name = json.loads(file.read_text(encoding="utf-8")), str(file)
    history = state.get("log_history")
    if not history:
        raise ValueError(f"{name!r} has no log_history: was anything logged (logging_steps)?")
    return history


def _series(history: list[dict], key: str) -> tuple[list[float], list[float]]:
    points = [(e["step"], e[key]) for e in history if key in e and "step" in e and e[key] is not None]
    return [p[0] for p in points], [p[1] for p in points]


def _keys(history: list[dict], patterns: list[str]) -> list[str]:
    """Metric names (train form) matching `patterns`, in pattern order; regex groups sort numerically."""
    logged = {k.removeprefix("eval_") for entry in history for k in entry}
    keys = []
    for pattern in patterns:
        if pattern.startswith("^"):
            matches = {k: re.match(pattern, k) for k in logged}
            keys.extend(sorted((k for k, m in matches.items() if m), key=lambda k: int(matches[k].group(1))))
        elif pattern in logged:
            keys.append(pattern)
    return keys


def plot_training_curves(
    trainer_state: str | os.PathLike | dict, output_dir: str | os.PathLike, dpi: int = 100
) -> dict[str, str]:
    """
    Draw the [`PLOTS`] that have data into `<output_dir>/<name>.png`.

    Returns:
        `{name: png path}` for the figures drawn (a figure none of whose metrics were logged is skipped).

    Raises:
        `FileNotFoundError` / `ValueError` for a missing state file or empty history, and `ValueError` when neither
        the loss nor a ranking metric appears in it.
    """
    history = load_log_history(trainer_state)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, (title, ylabel, patterns) in PLOTS.items():
        keys = _keys(history, patterns)
        lines = []
        for key in keys:
            for prefix, style in (("", "-"), ("eval_", "--")):
                steps, values = _series(history, prefix + key)
                if steps:
                    lines.append((prefix + key, steps, values, style))
        if not lines:
            continue
        figure = Figure(figsize=(6.4, 4.0), dpi=dpi)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        colors = {}
        for label, steps, values, style in lines:
            base = label.removeprefix("eval_")
            color = colors.setdefault(base, f"C{len(colors) % 10}")
            marker = "o" if style == "--" or len(steps) < 20 else None  # evaluations are sparse: always mark them
            axes.plot(steps, values, style, color=color, marker=marker, ms=3, label=label)
        axes.set_title(title)
        axes.set_xlabel("step")
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        figure.tight_layout()
        path = output_dir / f"{name}.png"
        figure.savefig(path)
        written[name] = str(path)
    if not written:
        raise ValueError(
            "Neither the loss nor any ranking metric (rewards/margins, rewards/rank_k, ranking/pairwise_accuracy, "
            "ranking/kendall_tau) is in this log history: was anything logged (logging_steps)?"
        )
    return written


# round metric -> (title, y label) of the `iterate` stage's per-round curves
ROUND_PLOTS = {
    "mean_reward": ("Mean reward of the round's samples", "reward"),
    "kl_to_sft": ("KL(policy || SFT) on the round's samples", "nats per completion"),
    "lists": ("Usable lists per round", "lists"),
    "acceptance_rate": ("RSO acceptance rate", "accepted / sampled"),
}


def plot_rounds(rounds: str | os.PathLike, output_dir: str | os.PathLike, dpi: int = 100) -> dict[str, str]:
    """Per-round curves of an `iterate` run (its `rounds.jsonl`, or the run folder holding it) into
    `<output_dir>/round_<metric>.png`, one per metric of [`ROUND_PLOTS`] that was logged. Returns `{name: path}`."""
    path = Path(rounds)
    path = path / "rounds.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist: is this an `iterate` run folder?")
    records = [row for row in read_jsonl(path) if isinstance(row.get("round"), int)]  # a cut last line is skipped
    if not records:
        raise ValueError(f"{str(path)!r} holds no finished round.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for key, (title, ylabel) in ROUND_PLOTS.items():
        points = [(r["round"], r[key]) for r in records if r.get(key) is not None]
        if not points:
            continue
        figure = Figure(figsize=(6.4, 4.0), dpi=dpi)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        axes.plot([p[0] for p in points], [p[1] for p in points], "-o", ms=4)
        axes.set_title(title)
        axes.set_xlabel("round")
        axes.set_ylabel(ylabel)
        axes.set_xticks([p[0] for p in points])
        axes.grid(alpha=0.3)
        figure.tight_layout()
        written[key] = str(output_dir / f"round_{key}.png")
        figure.savefig(written[key])
    return written
