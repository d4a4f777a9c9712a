"""Prompt sets: load them from files, saved datasets or lists, and render prompts and answers as plain text."""

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trl.data_utils import is_conversational


def _check_prompt(value: Any, index: int, column: str) -> Any:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"Prompt set row {index}: the {column!r} field is an empty string.")
        return value
    if isinstance(value, list) and value and is_conversational({"prompt": value}):
        return value
    raise ValueError(
        f"Prompt set row {index}: the {column!r} field must be a string or a list of chat messages "
        f"({{'role', 'content'}}), got {type(value).__name__}."
    )


def load_rows(source: Any, split: str | None = None) -> list[dict]:
    """Rows of a `.jsonl` / `.json` file, a `save_to_disk` folder, a `datasets.Dataset` or a list (of rows or prompts)."""
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"Prompt set {str(path)!r} does not exist.")
        if path.is_dir():  # a `datasets` dataset saved with `save_to_disk`
            from datasets import DatasetDict, load_from_disk

            source = load_from_disk(str(path))
            if isinstance(source, DatasetDict):
                if split is None:
                    raise ValueError(f"{str(path)!r} holds splits {list(source)}: pass `split`.")
                source = source[split]
            return source.to_list()
        if path.suffix == ".jsonl":
            rows = []
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, start=1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as error:
                            raise ValueError(f"{str(path)!r} line {number} is not valid JSON: {error}") from None
            return rows
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and split is not None:
                data = data[split]
            if not isinstance(data, list):
                raise ValueError(f"{str(path)!r} must hold a JSON list of rows.")
            return data
        raise ValueError(f"Unsupported prompt set file {str(path)!r}: expected .jsonl, .json or a dataset folder.")
    if hasattr(source, "to_list"):  # datasets.Dataset
        return source.to_list()
    if isinstance(source, Sequence):
        return [row if isinstance(row, dict) else {"prompt": row} for row in source]
    raise TypeError(f"Cannot read a prompt set from a {type(source).__name__}.")


def check_limit(limit: int | None) -> None:
    """Refuse a `limit` below 1: `rows[:-1]` would silently drop the last prompt and `rows[:0]` keep none."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive number of prompts (or left out for all), got {limit!r}.")


def load_prompts(
    source: Any,
    prompt_column: str = "prompt",
    reference_column: str | None = "reference",
    split: str | None = None,
    limit: int | None = None,
) -> list[dict]:
    """
    Load a prompt set: rows `{"prompt": ..., "reference"?: ..., **other columns}`.

    Args:
        source: a `.jsonl` / `.json` file, a folder saved with `datasets`' `save_to_disk`, a `datasets.Dataset`, or
            a list of rows (dicts) or of prompts.
        prompt_column: column holding the prompt (a string or a list of chat messages); renamed to `"prompt"`.
        reference_column: optional column holding the reference answer (a string or a list of strings); renamed
            to `"reference"` when present. References are only needed by the text metrics.
        split: split to read from a `DatasetDict` folder or a JSON object of splits.
        limit: keep only the first `limit` prompts (`None`: all; 0 or negative: a `ValueError`, see [`check_limit`]).

    Raises:
        `FileNotFoundError` for a missing file; `ValueError` for an empty set, a missing column (naming the columns
        found) or a prompt that is neither a non-empty string nor a chat-message list (naming the row).
    """
    check_limit(limit)
    rows = load_rows(source, split)
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise ValueError(f"The prompt set {source!r} is empty: there is nothing to evaluate.")
    out = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"Prompt set row {index} is a {type(row).__name__}, not an object.")
        if prompt_column not in row:
            hint = (
                "it is an MT-Bench question file (`turns`): pass `--multi_turn`"
                if "turns" in row and "question_id" in row
                else "pass the right `prompt_column`"
            )
            raise ValueError(
                f"Prompt set row {index} has no {prompt_column!r} column (columns: {sorted(row)}); {hint}."
            )
        new = {k: v for k, v in row.items() if k not in (prompt_column, reference_column)}
        new["prompt"] = _check_prompt(row[prompt_column], index, prompt_column)
        if reference_column is not None and row.get(reference_column) is not None:
            new["reference"] = row[reference_column]
        out.append(new)
    return out


def prompt_text(prompt: Any) -> str:
    """Plain text of a prompt: the string itself, or the conversation as `role: content` lines (one message: its
    content alone)."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1:
        return prompt[0]["content"]
    return "\n".join(f"{message['role']}: {message['content']}" for message in prompt)


def answer_text(completion: Any) -> str:
    """Plain text of a completion: the string itself, or the content of the (last) assistant message."""
    if isinstance(completion, str):
        return completion.strip()
    if isinstance(completion, dict):
        return str(completion.get("content", "")).strip()
    return str(completion[-1]["content"]).strip() if completion else ""
