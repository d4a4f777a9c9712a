"""The ranked-preference example and its validation.

One row per prompt:

- ``prompt``: a string, or a list of chat messages (conversational, as in TRL).
- ``completions``: a list of K >= 2 completions, each a string or a list of assistant messages.
- ``scores``: a list of K finite floats, higher is better. Equal scores are ties.

K may differ between rows. Every check raises ``ValueError`` naming the row index and the field, so a bad row
fails before any tensor is built; nothing is dropped silently.
"""

import math
from collections.abc import Iterable, Mapping
from numbers import Real
from typing import Any


RANKED_COLUMNS = ("prompt", "completions", "scores")
PAIRWISE_COLUMNS = ("chosen", "rejected")
CHAT_ROLES = frozenset({"system", "user", "assistant", "tool"})


def is_ranked(example_or_columns: Mapping[str, Any] | Iterable[str]) -> bool:
    """Whether a row (or a list of column names) is in the ranked schema."""
    keys = example_or_columns.keys() if isinstance(example_or_columns, Mapping) else set(example_or_columns)
    return "completions" in keys and "scores" in keys


def is_pairwise(example_or_columns: Mapping[str, Any] | Iterable[str]) -> bool:
    """Whether a row (or a list of column names) is TRL pairwise preference data (explicit or implicit prompt)."""
    keys = example_or_columns.keys() if isinstance(example_or_columns, Mapping) else set(example_or_columns)
    return "chosen" in keys and "rejected" in keys


def _fail(index: int | None, field: str, message: str) -> None:
    where = f"row {index}" if index is not None else "row"
    raise ValueError(f"{where}, field '{field}': {message}")


def _check_messages(messages: list, index: int | None, field: str, allowed_roles: frozenset[str]) -> None:
    if len(messages) == 0:
        _fail(index, field, "empty list of messages")
    for m, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            _fail(index, f"{field}[{m}]", f"expected a message with 'role' and 'content', got {message!r:.80}")
        role = message["role"]
        if role not in allowed_roles:
            _fail(index, f"{field}[{m}].role", f"unknown chat role {role!r}; expected one of {sorted(allowed_roles)}")
        content = message["content"]
        if content is None or (isinstance(content, str) and not content.strip()):
            _fail(index, f"{field}[{m}].content", "empty message content")


def validate_ranked_example(example: Mapping[str, Any], index: int | None = None) -> None:
    """Check one ranked row; raise ``ValueError`` naming ``index`` and the field on the first problem found.

    Checked: the three columns exist; ``prompt`` is a non-empty string or a list of chat messages with known roles;
    ``completions`` is a list of K >= 2 non-empty completions of the same kind as the prompt (string or assistant
    messages); ``scores`` has K finite real numbers (``bool`` is rejected).
    """
    for column in RANKED_COLUMNS:
        if column not in example:
            _fail(index, column, f"missing column; a ranked row needs {list(RANKED_COLUMNS)}, got {sorted(example)}")
    prompt, completions, scores = example["prompt"], example["completions"], example["scores"]

    conversational = isinstance(prompt, list)
    if conversational:
        _check_messages(prompt, index, "prompt", CHAT_ROLES)
    elif not isinstance(prompt, str):
        _fail(index, "prompt", f"expected a string or a list of messages, got {type(prompt).__name__}")
    elif not prompt.strip():
        _fail(index, "prompt", "empty prompt")

    if not isinstance(completions, list | tuple):
        _fail(index, "completions", f"expected a list, got {type(completions).__name__}")
    if len(completions) < 2:
        _fail(index, "completions", f"a ranked list needs K >= 2 completions, got {len(completions)}")
    for k, completion in enumerate(completions):
        field = f"completions[{k}]"
        if conversational:
            if not isinstance(completion, list):
                _fail(index, field, "the prompt is conversational, so each completion must be a list of messages")
            _check_messages(completion, index, field, frozenset({"assistant", "tool"}))
        elif not isinstance(completion, str):
            _fail(index, field, f"expected a string, got {type(completion).__name__}")
        elif not completion.strip():
            _fail(index, field, "empty completion")

    if not isinstance(scores, list | tuple):
        _fail(index, "scores", f"expected a list of numbers, got {type(scores).__name__}")
    if len(scores) != len(completions):
        _fail(index, "scores", f"len(scores)={len(scores)} != len(completions)={len(completions)}")
    for k, score in enumerate(scores):
        if isinstance(score, bool) or not isinstance(score, Real):
            _fail(index, f"scores[{k}]", f"expected a finite number, got {score!r}")
        if not math.isfinite(score):
            _fail(index, f"scores[{k}]", f"non-finite score {score!r}")


def validate_ranked_dataset(dataset: Iterable[Mapping[str, Any]]) -> None:
    """Validate every row of a ranked dataset (a ``datasets.Dataset`` or any iterable of rows)."""
    column_names = getattr(dataset, "column_names", None)
    if column_names is not None:
        for column in RANKED_COLUMNS:
            if column not in column_names:
                _fail(None, column, f"missing column; the dataset has {column_names}")
    for index, example in enumerate(dataset):
        validate_ranked_example(example, index)


def rank_order(scores: list[float]) -> list[int]:
    """Indices that sort ``scores`` best first; stable, so tied completions keep their input order."""
    return sorted(range(len(scores)), key=lambda k: -scores[k])
