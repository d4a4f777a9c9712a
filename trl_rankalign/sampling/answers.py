"""Prompt sets in, answers JSONL out: load prompts, generate one answer per prompt per checkpoint, load answers back.

Generation is [`trl_rankalign.sampling.generation.sample_and_score`] (any backend, batched, progress bar, sharded across
processes): the answers file *is* its resumable cache, one line per prompt `{"index", "prompt", "completions",
"generation"}`, appended batch by batch, so an interrupted run keeps what it generated and a rerun with the same file
continues where it stopped. `generation` records what the answers were made with (backend, model fingerprint,
tokenizer, decoding settings): a rerun with another checkpoint or other settings regenerates the file (with a warning
naming what changed) instead of keeping answers that no longer match the command.
"""

import gc
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .fingerprint import model_fingerprint
from .generation import sample_and_score
from .jsonl import output_folder, read_jsonl
from .prompts import answer_text, load_prompts, prompt_text  # noqa: F401  (re-exported)


__all__ = [
    "answer_text",
    "check_checkpoint",
    "generate_answers",
    "generate_answers_for_models",
    "load_answers",
    "load_prompts",
    "model_name_from_path",
    "prompt_text",
    "safe_answers_name",
]


def model_name_from_path(checkpoint: str | os.PathLike) -> str:
    """A short model name for file names and exports: the checkpoint folder's name (`a/b/checkpoint-50` ->
    `b-checkpoint-50`, `org/model` -> `model`)."""
    parts = [p for p in Path(str(checkpoint)).parts if p not in ("/", ".", "..")]
    if not parts:
        return "model"
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}-{parts[-1]}"
    return parts[-1]


def safe_answers_name(name: str) -> str:
    """`name` when it can name a file inside the output folder (no folder part, not hidden, not `.`/`..`); else a
    `ValueError`. `--name ../../x` must not write outside `--output_dir`."""
    if (
        not isinstance(name, str)
        or not name.strip()
        or name in (".", "..")
        or name.startswith(".")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or Path(name).name != name
    ):
        raise ValueError(
            f"Answers name {name!r} must be a plain file name (no folders, not hidden): pick another --name."
        )
    return name


def _looks_local(checkpoint: str) -> bool:
    """A string that can only be a local path (a hub id is `name` or `org/name`)."""
    return (
        checkpoint.startswith(("/", ".", "~")) or checkpoint.count("/") > 1 or (os.sep != "/" and os.sep in checkpoint)
    )


def check_checkpoint(checkpoint: Any, what: str = "Checkpoint") -> None:
    """Fail fast, naming the path and what is wrong, for a local checkpoint that does not exist, is a file, or has no
    `config.json` (transformers would report a missing folder as a malformed hub id)."""
    if isinstance(checkpoint, str | os.PathLike):
        path = os.path.expanduser(str(checkpoint))
        if not os.path.exists(path) and _looks_local(str(checkpoint)):
            raise FileNotFoundError(f"{what} {str(checkpoint)!r} does not exist (no such folder).")
        if os.path.isfile(path):
            raise FileNotFoundError(f"{what} {str(checkpoint)!r} is a file, not a saved model folder.")
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"{what} {path!r} has no config.json: not a saved model folder.")


def _load_model(checkpoint: str, device: str | None, load_weights: bool = True):
    """`(model, tokenizer)` of a checkpoint; `model` is `None` without `load_weights` (the server backend samples
    elsewhere and needs only the tokenizer's chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = os.path.expanduser(str(checkpoint))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if not load_weights:
            return None, tokenizer
        dtype = "auto" if torch.cuda.is_available() else torch.float32
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"Cannot load checkpoint {str(checkpoint)!r}: {error}") from error
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return model, tokenizer


def _check_cache_matches(output_file: str | os.PathLike, prompts: list) -> None:
    for row in read_jsonl(output_file):
        index = row.get("index")
        if not isinstance(index, int) or index >= len(prompts) or row.get("prompt") != prompts[index]:
            raise ValueError(
                f"{str(output_file)!r} holds answers for a different prompt set (row index {index!r} does not match "
                "prompt set row with that index): pass another output file, or delete this one to regenerate."
            )


def generate_answers(
    model: Any,
    prompts: Sequence[Any],
    output_file: str | os.PathLike,
    tokenizer: Any = None,
    max_new_tokens: int = 256,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_samples: int = 1,
    batch_size: int = 8,
    seed: int = 0,
    device: str | None = None,
    top_k: int = 0,
    backend: str = "transformers",
    on_stale: str = "regenerate",
    **backend_options,
) -> list[dict]:
    """
    Generate `num_samples` answers per prompt with one checkpoint and save them to `output_file` (JSONL), resumably.

    Args:
        model: a checkpoint folder / hub id, or a loaded causal LM (then pass its `tokenizer`).
        prompts: prompt rows from [`load_prompts`] (dicts with a `"prompt"`) or bare prompts (strings or chat-message
            lists).
        output_file: the answers JSONL; rows already there (from an interrupted run) are kept and skipped when they
            were made with the same model and settings, regenerated otherwise. It must belong to the same prompt set:
            a row whose prompt differs from the prompt at its index is an error.
        max_new_tokens, do_sample, temperature, top_k, top_p: decoding; greedy by default (evaluation should be
            reproducible). The checkpoint's own generation config (EOS ids, pad id) is the starting point.
        num_samples: answers per prompt (`completions` holds them; win rates and exports use the first).
        batch_size: prompts per batch; batch `b` is seeded with `seed + b`, so a resumed sampled run draws what the
            uninterrupted one would have.
        backend, **backend_options: the generation backend (`"transformers"`, `"server"`, `"vllm"`) and its options
            (see [`trl_rankalign.sampling.generation.make_backend`]); with `"server"` only the tokenizer is loaded.
        on_stale: `"regenerate"` answers made with another model or other settings (with a warning), or `"error"`
            (a `StaleCacheError` naming the changed settings).

    Returns:
        The rows `{"index", "prompt", "completions", "generation"}` in prompt order.
    """
    prompts = [p["prompt"] if isinstance(p, dict) else p for p in prompts]
    if not prompts:
        raise ValueError("The prompt set is empty: there is nothing to generate.")
    _check_cache_matches(output_file, prompts)
    identity = None
    if isinstance(model, str | os.PathLike):
        check_checkpoint(model)
        if backend != "server":
            identity = model_fingerprint(os.path.expanduser(str(model)))  # of its files, before loading them
        model, tokenizer = _load_model(str(model), device, load_weights=backend != "server")
    elif tokenizer is None:
        raise ValueError("Pass the `tokenizer` together with a loaded model.")
    desc = f"Generating answers -> {Path(output_file).name}"
    return sample_and_score(
        model,
        tokenizer,
        prompts,
        num_samples,
        batch_size=batch_size,
        cache_file=output_file,
        seed=seed,
        desc=desc,
        backend=backend,
        model_identity=identity,
        on_stale=on_stale,
        temperature=temperature if do_sample else 0.0,
        top_k=top_k if do_sample else 0,
        top_p=top_p if do_sample else 1.0,
        max_new_tokens=max_new_tokens,
        **backend_options,
    )


def generate_answers_for_models(
    models: Sequence[str] | dict[str, str],
    prompts: Sequence[Any],
    output_dir: str | os.PathLike,
    **kwargs,
) -> dict[str, str]:
    """
    [`generate_answers`] for several checkpoints, one after the other, into `<output_dir>/<name>.jsonl`.

    `models` is a list of checkpoints (names from [`model_name_from_path`]) or a `{name: checkpoint}` dict. Every
    name must be a plain file name ([`safe_answers_name`]) and every local checkpoint is checked before anything is
    generated, so a typo fails in a second, not after hours; a failure later on leaves the files already written
    intact for a rerun. Returns `{name: answers file}`.
    """
    if not isinstance(models, dict):
        models = {model_name_from_path(m): m for m in models}
    if not models:
        raise ValueError("No checkpoints to generate answers with.")
    for name in models:
        safe_answers_name(name)
    for checkpoint in models.values():
        check_checkpoint(checkpoint)
    output_folder(output_dir)
    files = {}
    for name, checkpoint in models.items():
        files[name] = str(Path(output_dir) / f"{name}.jsonl")
        generate_answers(checkpoint, prompts, files[name], **kwargs)
        gc.collect()
    return files


def load_answers(source: str | os.PathLike | Sequence[dict]) -> list[dict]:
    """
    Answer rows `{"index", "prompt", "completions", ...}` from an answers JSONL (or rows already loaded), sorted by
    index, duplicates (the same index twice) keeping the last. A missing or empty file is an error.
    """
    if isinstance(source, str | os.PathLike):
        if not os.path.exists(source):
            raise FileNotFoundError(f"Answers file {str(source)!r} does not exist.")
        rows = read_jsonl(source)
        name = str(source)
    else:
        rows, name = list(source), "the answers"
    if not rows:
        raise ValueError(f"{name!r} holds no answers.")
    by_index = {}
    for row in rows:
        if "index" not in row or "prompt" not in row or not row.get("completions"):
            raise ValueError(f"{name!r}: an answer row needs 'index', 'prompt' and 'completions'; got {sorted(row)}.")
        by_index[row["index"]] = row
    return [by_index[i] for i in sorted(by_index)]
