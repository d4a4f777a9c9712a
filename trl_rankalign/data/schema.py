"""The ranked-preference example and its validation.

One row per prompt:

- ``prompt``: a string, or a list of chat messages (conversational, as in TRL).
- ``completions``: a list of K >= 2 completions, each a string or a list of assistant messages.
- ``scores``: a list of K finite floats, higher is better. Equal scores are ties.

K may differ between rows. Every check raises ``ValueError`` naming the row index and the field, so a bad row
fails before any tensor is built; nothing is dropped silently. Scores must also fit in float32 (|score| <= 3.4e38),
the dtype the collator stores them in.

Pre-tokenised rows (``prompt_ids``, ``completion_ids``, ``scores``, optional ``ref_logps``) are checked by
`validate_tokenized_example` in the same way.
"""

import math
from collections.abc import Iterable, Mapping
from numbers import Integral, Real
from typing import Any


RANKED_COLUMNS = ("prompt", "completions", "scores")
TOKENIZED_COLUMNS = ("prompt_ids", "completion_ids", "scores")
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


# torch.finfo(torch.float32).max, written out so that this module needs only the standard library
FLOAT32_MAX = 3.4028234663852886e38


def _check_number(value: Any, index: int | None, field: str, what: str) -> None:
    """A real number (not ``bool``), finite, and finite in float32 too (|value| <= ``FLOAT32_MAX``)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        _fail(index, field, f"expected a finite number, got {value!r:.80}")
    try:
        as_float = float(value)
    except OverflowError:  # an int beyond the float64 range
        _fail(index, field, f"{what} {value!r:.40} overflows float32 (|{what}| > {FLOAT32_MAX:.4g}); rescale it")
    if not math.isfinite(as_float):
        _fail(index, field, f"non-finite {what} {value!r}")
    if abs(as_float) > FLOAT32_MAX:
        _fail(index, field, f"{what} {value!r} overflows float32 (|{what}| > {FLOAT32_MAX:.4g}); rescale it")


def _check_numbers(values: Any, k: int, index: int | None, field: str, what: str) -> None:
    """A list of ``k`` numbers, each checked by `_check_number`."""
    if not isinstance(values, list | tuple):
        _fail(index, field, f"expected a list of numbers, got {type(values).__name__}")
    if len(values) != k:
        _fail(index, field, f"len({field})={len(values)} != the number of completions {k}")
    for j, value in enumerate(values):
        _check_number(value, index, f"{field}[{j}]", what)


def _check_messages(messages: list, index: int | None, field: str, allowed_roles: frozenset[str]) -> None:
    if len(messages) == 0:
        _fail(index, field, "empty list of messages")
    for m, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message:
            _fail(index, f"{field}[{m}]", f"expected a message with 'role' and 'content', got {message!r:.80}")
        role = message["role"]
        if role not in allowed_roles:
            _fail(index, f"{field}[{m}].role", f"unknown chat role {role!r}; expected one of {sorted(allowed_roles)}")
        if role == "assistant" and message.get("tool_calls"):
            # TRL's tool-calling format: an assistant turn that calls tools may carry no text
            if not isinstance(message["tool_calls"], list):
                _fail(
                    index,
                    f"{field}[{m}].tool_calls",
                    f"expected a list of tool calls, got {message['tool_calls']!r:.80}",
                )
            continue
        if "content" not in message:
            _fail(index, f"{field}[{m}]", f"expected a message with 'role' and 'content', got {message!r:.80}")
        content = message["content"]
        if content is None or (isinstance(content, str) and not content.strip()):
            _fail(index, f"{field}[{m}].content", "empty message content")


def validate_ranked_example(example: Mapping[str, Any], index: int | None = None) -> None:
    """Check one ranked row; raise ``ValueError`` naming ``index`` and the field on the first problem found.

    Checked: the three columns exist; ``prompt`` is a non-empty string or a list of chat messages with known roles;
    ``completions`` is a list of K >= 2 non-empty completions of the same kind as the prompt (string or assistant
    messages); ``scores`` has K finite real numbers (``bool`` is rejected) that fit in float32
    (|score| <= ``FLOAT32_MAX``), the dtype the collator stores them in.
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
        _check_number(score, index, f"scores[{k}]", "score")


def _token_ids(value: Any, index: int | None, field: str, allow_empty: bool) -> None:
    """A list of non-negative ``int`` token ids (``bool`` rejected); fast path for plain ints."""
    if not isinstance(value, list | tuple):
        _fail(index, field, f"expected a list of token ids (ints), got {type(value).__name__}")
    if not value and not allow_empty:
        _fail(index, field, "empty list of token ids")
    if all(type(t) is int for t in value):
        if value and min(value) < 0:
            t = next(t for t, token in enumerate(value) if token < 0)
            _fail(index, f"{field}[{t}]", f"token ids must be non-negative, got {value[t]}")
        return
    for t, token in enumerate(value):
        if isinstance(token, bool) or not isinstance(token, Integral):
            _fail(index, f"{field}[{t}]", f"expected an int token id, got {token!r:.40}")
        if token < 0:
            _fail(index, f"{field}[{t}]", f"token ids must be non-negative, got {token}")


def validate_tokenized_example(example: Mapping[str, Any], index: int | None = None) -> None:
    """Check one pre-tokenised ranked row; raise ``ValueError`` naming ``index`` and the field on the first problem.

    The row the collator takes: ``prompt_ids`` a list of ints (may be empty: the prompt/completion boundary of some
    tokenisers falls at 0), ``completion_ids`` K >= 2 non-empty lists of ints, ``scores`` K finite numbers that fit
    in float32 and, when present and not ``None``, ``ref_logps`` K such numbers too. Token ids must be
    non-negative ints (``bool`` rejected). Other columns (``prompt``, ``completions``, ...) are ignored.
    """
    for column in TOKENIZED_COLUMNS:
        if column not in example:
            _fail(
                index,
                column,
                f"missing column; a pre-tokenised row needs {list(TOKENIZED_COLUMNS)}, got {sorted(example)}",
            )
    _token_ids(example["prompt_ids"], index, "prompt_ids", allow_empty=True)

    completion_ids = example["completion_ids"]
    if not isinstance(completion_ids, list | tuple):
        _fail(index, "completion_ids", f"expected a list of K token-id lists, got {type(completion_ids).__name__}")
    if len(completion_ids) < 2:
        _fail(index, "completion_ids", f"a ranked list needs K >= 2 completions, got {len(completion_ids)}")
    for k, ids in enumerate(completion_ids):
        _token_ids(ids, index, f"completion_ids[{k}]", allow_empty=False)

    K = len(completion_ids)
    _check_numbers(example["scores"], K, index, "scores", "score")
    if example.get("ref_logps") is not None:
        _check_numbers(example["ref_logps"], K, index, "ref_logps", "log-prob")


def _is_empty(dataset: Iterable[Any]) -> bool:
    """``len(dataset) == 0`` where a length exists (``datasets.Dataset``), else whether iterating yields nothing
    (``IterableDataset``, generators: this consumes one row of a one-shot iterator)."""
    try:
        return len(dataset) == 0  # type: ignore[arg-type]
    except TypeError:  # no __len__ (IterableDataset)
        pass
    try:
        next(iter(dataset))
    except StopIteration:
        return True
    return False


def require_non_empty(dataset: Iterable[Any], name: str = "train") -> None:
    """Raise ``ValueError("The {name} dataset is empty: ...")`` if ``dataset`` has no rows.

    Works for a ``datasets.Dataset`` (its length) and an ``IterableDataset`` or any re-iterable (the first row is
    read, so a ``StopIteration`` becomes this error instead of escaping from a later ``next(iter(...))``).
    """
    if _is_empty(dataset):
        raise ValueError(
            f"The {name} dataset is empty: it has no rows. Check the dataset name, split and data files, and any "
            "filtering or conversion applied to it (a converter may have removed every row)."
        )


def validate_ranked_dataset(dataset: Iterable[Mapping[str, Any]], allow_empty: bool = False) -> None:
    """Validate every row of a ranked dataset (a ``datasets.Dataset`` or any iterable of rows).

    An empty dataset raises ``ValueError("the dataset is empty ...")`` unless ``allow_empty=True``.
    """
    column_names = getattr(dataset, "column_names", None)
    if column_names is not None:
        for column in RANKED_COLUMNS:
            if column not in column_names:
                _fail(None, column, f"missing column; the dataset has {column_names}")
    num_rows = 0
    for index, example in enumerate(dataset):
        validate_ranked_example(example, index)
        num_rows += 1
    if num_rows == 0 and not allow_empty:
        raise ValueError(
            "the dataset is empty: there are no ranked rows to validate. Check the dataset name, split and data "
            "files, and any filtering or conversion applied to it (a converter may have removed every row); pass "
            "allow_empty=True to accept an empty dataset."
        )


def rank_order(scores: list[float]) -> list[int]:
    """Indices that sort ``scores`` best first; stable, so tied completions keep their input order."""
    return sorted(range(len(scores)), key=lambda k: -scores[k])
