"""The one round runner of the online methods: sample → score → select → train → record, resumable.

[`run_rounds`] drives RAFT, `iterate` (and any loop of the same shape): each method gives its own steps, the runner
owns what they share, so it cannot drift between them:

- identity: round k's key is [`~trl_rankalign.online.keys.round_key`] of the settings chained with round k−1's key; a
  round is finished when `round_k/model/.done` holds exactly its key (weights fingerprints, not paths, so a policy or
  reward retrained in place redoes the rounds);
- redo: an unfinished round deletes its own products and every later round's (`model`, the selected set, the trainer's
  folder) and their lines of `rounds.jsonl`; the sampling cache `samples.jsonl` stays (its rows are keyed on the
  policy's fingerprint and the decoding settings, so only still-valid samples are reused);
- a served policy ([`~trl_rankalign.online.served.ServedPolicy`]) is updated to the weights the round starts from and
  verified before the round samples;
- record: `round_k/settings.json` (the key, no secrets), `round_k/metrics.json`, one line of `rounds.jsonl` (locked,
  one line per round), `.done` last; the time each step took is part of the metrics (`time/sample`, `time/select`,
  `time/train`, `time/score` and `time/policy_update` where they apply, in seconds).
"""

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from ..sampling.fingerprint import model_fingerprint
from .records import forget_rounds_from, record_round
from .served import ServedPolicy


__all__ = ["OnlineRound", "load_policy", "run_rounds"]

logger = logging.getLogger(__name__)

MARKER = ".done"
SETTINGS_FILE = "settings.json"
METRICS_FILE = "metrics.json"


@dataclass
class OnlineRound:
    """One round: its index, folder, key, and where the sampling comes from (`sampling`: backend overrides, e.g. the
    served model name and the policy's identity for the sampling cache, empty when the policy samples here)."""

    index: int
    dir: Path
    key: dict
    sampling: dict

    @property
    def model_dir(self) -> Path:
        return self.dir / "model"


def load_policy(path: Path, policy: Any, model_init_kwargs: dict | None = None, peft: bool = False) -> Any:
    """The policy a finished round saved: its adapter on the current policy's base (PEFT), or the full model."""
    if peft:
        from peft import PeftModel

        base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
        return PeftModel.from_pretrained(base, str(path), is_trainable=True)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), **(model_init_kwargs or {}))


def _finished(round_dir: Path, key: dict) -> bool:
    try:
        return json.loads((round_dir / "model" / MARKER).read_text()) == key
    except (OSError, json.JSONDecodeError):
        return False


def _forget_products_from(output: Path, first: int, products: tuple[str, ...]) -> None:
    for round_dir in output.glob("round_*"):
        suffix = round_dir.name.split("_")[-1]
        if suffix.isdigit() and int(suffix) >= first:
            for name in ("model", *products):
                shutil.rmtree(round_dir / name, ignore_errors=True)
            (round_dir / METRICS_FILE).unlink(missing_ok=True)


def run_rounds(
    output_dir: str,
    num_rounds: int,
    model: Any,
    *,
    key: Callable[[dict | None, int], dict],
    sample: Callable[[OnlineRound, Any], Any],
    select: Callable[[OnlineRound, Any], tuple[Any, dict]],
    train: Callable[[OnlineRound, Any, Any, dict], Any],
    load: Callable[[OnlineRound, Any], Any],
    score: Callable[[OnlineRound, Any], Any] | None = None,
    products: tuple[str, ...] = (),
    served: ServedPolicy | None = None,
    processing_class: Any = None,
    name: str = "Online",
) -> tuple[Any, list[dict]]:
    """Run the rounds and return `(final policy, metrics of every round)`.

    Args:
        key: `(previous round's key or None, round index) -> this round's key` (see [`round_key`]).
        sample: `(round, policy) -> samples` (the step may score them too).
        score: `(round, samples) -> scored samples`, when sampling does not score.
        select: `(round, samples) -> (training set, metrics)`.
        train: `(round, policy, training set, metrics) -> trained policy`, saved to `round.model_dir`; it may add to
            `metrics` (e.g. the training losses).
        load: `(round, policy) -> the policy a finished round saved`.
        products: the round folder's entries the method writes besides `model` (deleted when a round is redone).
        served: a served policy to update before each round samples (server backend).
        processing_class: when given, it and the final policy are saved at the top of `output_dir`, as the other
            stages leave theirs.
    """
    state = PartialState()
    output = Path(output_dir)
    previous, history = None, []
    for index in range(num_rounds):
        round_dir = output / f"round_{index}"
        round_key = key(previous, index)
        previous = round_key
        if _finished(round_dir, round_key):
            logger.info("%s round %d already finished: loading %s", name, index, round_dir / "model")
            model = load(OnlineRound(index, round_dir, round_key, {}), model)
            metrics_file = round_dir / METRICS_FILE
            history.append(json.loads(metrics_file.read_text()) if metrics_file.is_file() else {"round": index})
            continue
        if (round_dir / "model" / MARKER).exists():
            logger.warning("%s round %d was made with other settings: redoing it and the later rounds.", name, index)
        state.wait_for_everyone()  # every process has checked the marker before anything is deleted
        if state.is_main_process:
            _forget_products_from(output, index, products)
            forget_rounds_from(output, index)
            round_dir.mkdir(parents=True, exist_ok=True)
            (round_dir / SETTINGS_FILE).write_text(json.dumps(round_key, sort_keys=True, indent=1))
        state.wait_for_everyone()

        times = {}
        start = time.perf_counter()
        sampling = {}
        if served is not None:
            fingerprint = model_fingerprint(model)
            checkpoint = output / f"round_{index - 1}" / "model" if index > 0 else None
            served_name = _update_served(served, state, index, checkpoint, fingerprint, model)
            sampling = {"served_model": served_name, "model_identity": f"served:{served_name}:{fingerprint}"}
            times["time/policy_update"] = time.perf_counter() - start
        current = OnlineRound(index, round_dir, round_key, sampling)

        start = time.perf_counter()
        samples = sample(current, model)
        times["time/sample"] = time.perf_counter() - start
        if score is not None:
            start = time.perf_counter()
            samples = score(current, samples)
            times["time/score"] = time.perf_counter() - start
        start = time.perf_counter()
        dataset, metrics = select(current, samples)
        times["time/select"] = time.perf_counter() - start
        start = time.perf_counter()
        model = train(current, model, dataset, metrics)
        times["time/train"] = time.perf_counter() - start
        metrics = {"round": index, **metrics, **times}
        logger.info("%s round %d: %s", name, index, {k: v for k, v in metrics.items() if not isinstance(v, list)})
        if state.is_main_process:
            (round_dir / METRICS_FILE).write_text(json.dumps(metrics) + "\n")
            record_round(output, metrics)
            (round_dir / "model" / MARKER).write_text(json.dumps(round_key, sort_keys=True))
        state.wait_for_everyone()
        history.append(metrics)
    if processing_class is not None:
        if state.is_main_process:
            model.save_pretrained(output_dir)
            processing_class.save_pretrained(output_dir)
        state.wait_for_everyone()
    return model, history


def _update_served(served: ServedPolicy, state: PartialState, index: int, checkpoint, fingerprint: str, model) -> str:
    """The name to sample round `index` from, after the served policy is updated once for all processes: the HTTP
    updates (reload, sglang, lora) are sent by the main process and their answer is broadcast (N processes would load
    an adapter N times, or reload the weights N times at once); TRL's NCCL sync gathers parameters, a collective
    that every process joins."""
    if served.mode == "nccl":
        return served.update(index, checkpoint, fingerprint, policy=model)
    name = [served.update(index, checkpoint, fingerprint, policy=model) if state.is_main_process else None]
    if state.num_processes > 1:
        broadcast_object_list(name)
    return name[0]
