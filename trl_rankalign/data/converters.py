"""Converters from public preference datasets to the ranked schema.

Every converter takes a `datasets.Dataset` (the 1:1 converters also take an `IterableDataset` and stay lazy) and
returns rows with exactly three columns:

- ``prompt``: a string, or a list of chat messages (conversational).
- ``completions``: K >= 2 completions (strings, or lists of assistant messages).
- ``scores``: K finite floats, higher is better; equal scores are ties.

A bad source row raises ``ValueError("row 3, field 'completions[1].annotations.helpfulness.Rating': ...")``:
nothing is dropped silently. The only deliberate filter is in [`from_ultrafeedback`] (completions that the source
itself marks as unscored); it logs how many completions and rows it removed.

```python
>>> from datasets import load_dataset
>>> from trl_rankalign.data.converters import convert
>>> ranked = convert(load_dataset("openbmb/UltraFeedback", split="train"), "ultrafeedback", score="overall")
```
"""

import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from numbers import Real
from typing import Any, NoReturn

from datasets import Dataset, IterableDataset
from trl.data_utils import extract_prompt

from trl_rankalign.data.schema import (
    RANKED_COLUMNS,
    is_pairwise,
    is_ranked,
    rank_order,
    validate_ranked_dataset,
    validate_ranked_example,
)


logger = logging.getLogger(__name__)

AnyDataset = Dataset | IterableDataset

ULTRAFEEDBACK_ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")
ULTRAFEEDBACK_SCORES = ("overall", "fine_grained", *ULTRAFEEDBACK_ASPECTS)
# From TRL's examples/datasets/tldr_preference.py (the trl-lib/tldr-preference dataset).
TLDR_PROMPT = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"
CNNDM_PROMPT = "Article:\n{article}\n\nTL;DR:"
# hh-rlhf turn markers; the final turn may be "\n\nAssistant:" with no trailing space when the response is empty.
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


# ---------------------------------------------------------------------------------------------------------------------
# Row-level helpers: every failure names the row index and the source field.
# ---------------------------------------------------------------------------------------------------------------------
def _fail(index: int, field: str, message: str) -> NoReturn:
    raise ValueError(f"row {index}, field '{field}': {message}")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _required(container: Any, key: str, index: int, field: str, expected: type | tuple[type, ...]) -> Any:
    """``container[key]``, which must be present, non-null and of type ``expected``; ``field`` is its full path."""
    value = container.get(key) if isinstance(container, Mapping) else None
    if value is None:
        _fail(index, field, "missing or null")
    if not isinstance(value, expected):
        names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
        _fail(index, field, f"expected {names}, got {_type_name(value)}: {value!r:.80}")
    return value


def _required_number(container: Any, key: str, index: int, field: str) -> float:
    """A real number (NaN allowed, ``bool`` rejected) as a float."""
    value = container.get(key) if isinstance(container, Mapping) else None
    if value is None:
        _fail(index, field, "missing or null")
    if isinstance(value, bool) or not isinstance(value, Real):
        _fail(index, field, f"expected a number, got {_type_name(value)}: {value!r:.80}")
    return float(value)


def _check_message_list(messages: list, index: int, field: str) -> None:
    """Shape check of a source conversation (roles and contents are checked again by the ranked validation)."""
    if not messages:
        _fail(index, field, "empty list of messages")
    for m, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            _fail(index, f"{field}[{m}]", f"expected a message with 'role' and 'content', got {message!r:.80}")
        if not isinstance(message.get("content"), str):
            _fail(index, f"{field}[{m}].content", f"expected a string, got {_type_name(message.get('content'))}")


def _validated(row: dict[str, Any], index: int, origin: str) -> dict[str, Any]:
    """Validate a produced ranked row; on failure say which source fields the ranked fields came from."""
    try:
        validate_ranked_example(row, index)
    except ValueError as error:
        raise ValueError(f"{error} (converted from {origin})") from None
    return row


def _column_names(dataset: Any) -> list[str]:
    names = getattr(dataset, "column_names", None)
    if names is None:  # an IterableDataset with unknown features: look at its first row
        first = next(iter(dataset), None)
        names = list(first.keys()) if first is not None else []
    return list(names)


def _require_columns(dataset: Any, required: Iterable[str], converter: str) -> list[str]:
    columns = _column_names(dataset)
    missing = [column for column in required if column not in columns]
    if missing:
        raise ValueError(f"field '{missing[0]}': missing column; {converter} needs {list(required)}, got {columns}")
    return columns


def _map_rows(dataset: AnyDataset, function: Callable[[dict, int], dict], columns: list[str]) -> AnyDataset:
    """1:1 conversion with ``map``: drops every source column, so the output has exactly the ranked columns."""
    return dataset.map(function, with_indices=True, remove_columns=columns)


def _from_rows(rows: list[dict[str, Any]]) -> Dataset:
    if not rows:
        return Dataset.from_dict({column: [] for column in RANKED_COLUMNS})
    return Dataset.from_list(rows)


def _validate_lazily(dataset: IterableDataset) -> IterableDataset:
    def validate(example: dict, index: int) -> dict:
        validate_ranked_example(example, index)
        return example

    return dataset.map(validate, with_indices=True)


# ---------------------------------------------------------------------------------------------------------------------
# Ranked (identity) and TRL pairwise
# ---------------------------------------------------------------------------------------------------------------------
def from_ranked(dataset: AnyDataset) -> AnyDataset:
    """Identity for data already in the ranked schema: validates every row and returns ``dataset`` unchanged.

    A `Dataset` is validated now; an `IterableDataset` is validated lazily, row by row, as it is consumed.
    """
    if isinstance(dataset, IterableDataset):
        _require_columns(dataset, RANKED_COLUMNS, "a ranked dataset")
        return _validate_lazily(dataset)
    validate_ranked_dataset(dataset)
    return dataset


def _kind(value: Any, index: int, field: str) -> str:
    if isinstance(value, str):
        return "standard"
    if isinstance(value, list):
        return "conversational"
    _fail(index, field, f"expected a string or a list of messages, got {_type_name(value)}")


def _pairwise_parts(example: Mapping, index: int, explicit: bool) -> tuple[Any, Any, Any]:
    """``(prompt, chosen, rejected)`` of a TRL pairwise row, extracting the implicit prompt when there is none."""
    chosen = _required(example, "chosen", index, "chosen", (str, list))
    rejected = _required(example, "rejected", index, "rejected", (str, list))
    kinds = {"chosen": _kind(chosen, index, "chosen"), "rejected": _kind(rejected, index, "rejected")}
    if explicit:
        prompt = _required(example, "prompt", index, "prompt", (str, list))
        kinds = {"prompt": _kind(prompt, index, "prompt"), **kinds}
    if len(set(kinds.values())) > 1:
        hint = ""
        if kinds.get("prompt") == "standard" and kinds["chosen"] == "conversational":
            hint = "; a string prompt next to full conversations is HuggingFaceH4/ultrafeedback_binarized's layout, "
            hint += "use convert(dataset, 'ultrafeedback_binarized')"
        field = "rejected" if kinds["chosen"] == kinds.get("prompt", kinds["chosen"]) else "chosen"
        _fail(index, field, f"mixes standard and conversational values: {kinds}{hint}")
    if not explicit:
        if len(chosen) == 0 or len(rejected) == 0:
            _fail(index, "chosen" if len(chosen) == 0 else "rejected", "empty value")
        parts = extract_prompt({"chosen": chosen, "rejected": rejected})
        prompt, chosen, rejected = parts["prompt"], parts["chosen"], parts["rejected"]
        if len(prompt) == 0:
            _fail(index, "chosen", "'chosen' and 'rejected' share no common prefix, so no prompt can be extracted")
    return prompt, chosen, rejected


def from_pairwise(dataset: AnyDataset) -> AnyDataset:
    """TRL pairwise preference rows to K=2 ranked rows with scores ``[1.0, 0.0]`` (chosen first).

    Source schema (TRL's preference format, standard or conversational). Every other column (`tools`,
    `chat_template_kwargs`, ...) is kept, so the trainer tokenises the prompt with it as TRL's DPO does:

    ```python
    # explicit prompt
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    {"prompt": [{"role": "user", "content": "What color is the sky?"}],
     "chosen": [{"role": "assistant", "content": "It is blue."}],
     "rejected": [{"role": "assistant", "content": "It is green."}]}
    # implicit prompt: the shared prefix is extracted with `trl.data_utils.extract_prompt`
    {"chosen": [{"role": "user", "content": "What color is the sky?"}, {"role": "assistant", "content": "Blue."}],
     "rejected": [{"role": "user", "content": "What color is the sky?"}, {"role": "assistant", "content": "Green."}]}
    ```

    ```python
    >>> dataset = load_dataset("trl-lib/ultrafeedback_binarized", split="train")
    >>> ranked = from_pairwise(dataset)
    ```

    Output: ``{"prompt": prompt, "completions": [chosen, rejected], "scores": [1.0, 0.0], **other columns}``.
    """
    columns = _require_columns(dataset, ("chosen", "rejected"), "from_pairwise")
    explicit = "prompt" in columns

    def convert_row(example: dict, index: int) -> dict:
        prompt, chosen, rejected = _pairwise_parts(example, index, explicit)
        row = {"prompt": prompt, "completions": [chosen, rejected], "scores": [1.0, 0.0]}
        return _validated(row, index, "completions[0] <- 'chosen', completions[1] <- 'rejected'")

    return dataset.map(convert_row, with_indices=True, remove_columns=["chosen", "rejected"])


# ---------------------------------------------------------------------------------------------------------------------
# openbmb/UltraFeedback
# ---------------------------------------------------------------------------------------------------------------------
def _ultrafeedback_score(completion: Mapping, score: str, index: int, path: str) -> float | None:
    """The selected score of one completion; ``None`` when the source marks it unscored (NaN or ``"N/A"``)."""
    if score in ("overall", "fine_grained"):
        key = "overall_score" if score == "overall" else "fine-grained_score"
        value = _required_number(completion, key, index, f"{path}.{key}")
        return None if math.isnan(value) else value
    annotations = _required(completion, "annotations", index, f"{path}.annotations", Mapping)
    aspect = _required(annotations, score, index, f"{path}.annotations.{score}", Mapping)
    field = f"{path}.annotations.{score}.Rating"
    rating = aspect.get("Rating")
    if rating is None:
        _fail(index, field, "missing or null")
    if isinstance(rating, str):
        if rating.strip().upper() == "N/A":
            return None
        try:
            value = float(rating)
        except ValueError:
            _fail(index, field, f"expected a rating such as '4' or 'N/A', got {rating!r:.80}")
    elif isinstance(rating, Real) and not isinstance(rating, bool):
        value = float(rating)
        if math.isnan(value):
            return None
    else:
        _fail(index, field, f"expected a rating string such as '4' or 'N/A', got {_type_name(rating)}")
    if not math.isfinite(value):
        _fail(index, field, f"non-finite rating {rating!r}")
    return value


def from_ultrafeedback(dataset: AnyDataset, score: str = "overall", conversational: bool = False) -> Dataset:
    """Raw `openbmb/UltraFeedback` rows (an instruction and its rated completions) to ranked rows.

    ```python
    >>> dataset = load_dataset("openbmb/UltraFeedback", split="train")
    >>> ranked = from_ultrafeedback(dataset, score="overall")
    ```

    Source schema (one row; ``completions`` usually has 4 entries, fewer in some rows):

    ```python
    {"source": "evol_instruct", "instruction": "...", "models": ["gpt-4", ...],
     "correct_answers": ["None"], "incorrect_answers": ["None"],
     "completions": [
         {"model": "gpt-4", "principle": "helpfulness", "custom_system_prompt": "...", "response": "...",
          "annotations": {
              "helpfulness": {"Rating": "4", "Rationale": "...", "Rationale For Rating": "...", "Type": ["1", "2"]},
              "honesty": {"Rating": "5", "Rationale": "..."},
              "instruction_following": {"Rating": "N/A", "Rationale": "..."},
              "truthfulness": {"Rating": "5", "Rationale": "...", "Rationale For Rating": "...", "Type": ["0"]}},
          "fine-grained_score": 4.75, "overall_score": 8.5, "critique": "..."},
         ...]}
    ```

    Args:
        dataset (`Dataset` or `IterableDataset`):
            Raw UltraFeedback rows.
        score (`str`, *optional*, defaults to `"overall"`):
            Which score ranks the completions: `"overall"` (``overall_score``, 1-10), `"fine_grained"`
            (``fine-grained_score``, the mean of the aspect ratings), or one aspect, `"helpfulness"`, `"honesty"`,
            `"instruction_following"` or `"truthfulness"` (its ``Rating``, a string "1"-"5" or "N/A"). Hyphens are
            accepted for underscores (`"instruction-following"`).
        conversational (`bool`, *optional*, defaults to `False`):
            `False`: the prompt is the instruction string and completions are response strings. `True`: the prompt
            is ``[{"role": "user", "content": instruction}]`` and each completion one assistant message.

    Returns:
        `Dataset`: ranked rows, completions in the source order (not sorted). ``custom_system_prompt`` is not used:
        each completion was generated under its own system prompt, which cannot be shared as one prompt.

    Deliberate filter (logged with its counts at WARNING): a completion whose selected score is NaN or ``"N/A"`` is
    removed from its list, and a row left with fewer than 2 scored completions is removed. Anything else that is
    wrong (a missing or null key, a wrong type, an unparsable rating, an empty response) raises ``ValueError``
    naming the row and the field, e.g. ``row 3, field 'completions[1].annotations.helpfulness.Rating'``.
    """
    key = score.replace("-", "_")
    if key not in ULTRAFEEDBACK_SCORES:
        raise ValueError(f"unknown UltraFeedback score {score!r}; expected one of {list(ULTRAFEEDBACK_SCORES)}")
    _require_columns(dataset, ("instruction", "completions"), "from_ultrafeedback")

    rows, total_rows, total_completions, removed_completions, removed_rows = [], 0, 0, 0, 0
    for index, example in enumerate(dataset):
        total_rows += 1
        instruction = _required(example, "instruction", index, "instruction", str)
        if not instruction.strip():
            _fail(index, "instruction", "empty instruction")
        source_completions = _required(example, "completions", index, "completions", list)
        responses, scores = [], []
        for k, completion in enumerate(source_completions):
            path = f"completions[{k}]"
            if not isinstance(completion, Mapping):
                _fail(index, path, f"expected a dict, got {_type_name(completion)}")
            response = _required(completion, "response", index, f"{path}.response", str)
            value = _ultrafeedback_score(completion, key, index, path)
            total_completions += 1
            if value is None:
                removed_completions += 1
                continue
            if not response.strip():
                _fail(index, f"{path}.response", "empty response")
            responses.append(response)
            scores.append(value)
        if len(responses) < 2:
            removed_rows += 1
            continue
        if conversational:
            prompt = [{"role": "user", "content": instruction}]
            completions = [[{"role": "assistant", "content": response}] for response in responses]
        else:
            prompt, completions = instruction, responses
        row = {"prompt": prompt, "completions": completions, "scores": scores}
        rows.append(
            _validated(row, index, "prompt <- 'instruction', completions <- the scored 'completions[*].response'")
        )

    level = logging.WARNING if removed_completions or removed_rows else logging.INFO
    logger.log(
        level,
        "from_ultrafeedback(score=%r): removed %d of %d completions whose score is NaN or 'N/A'; removed %d of %d rows "
        "left with fewer than 2 scored completions; kept %d rows.",
        key,
        removed_completions,
        total_completions,
        removed_rows,
        total_rows,
        len(rows),
    )
    return _from_rows(rows)


# ---------------------------------------------------------------------------------------------------------------------
# HuggingFaceH4/ultrafeedback_binarized
# ---------------------------------------------------------------------------------------------------------------------
def _split_final_assistant(messages: list, index: int, field: str) -> tuple[list, list]:
    _check_message_list(messages, index, field)
    last = len(messages) - 1
    if messages[last]["role"] != "assistant":
        _fail(index, f"{field}[{last}].role", f"the last message must be 'assistant', got {messages[last]['role']!r}")
    if last == 0:
        _fail(index, field, "no prompt messages before the final assistant message")
    return messages[:last], messages[last:]


def from_ultrafeedback_binarized(dataset: AnyDataset) -> AnyDataset:
    """`HuggingFaceH4/ultrafeedback_binarized` preference splits to K=2 conversational ranked rows.

    ```python
    >>> dataset = load_dataset("HuggingFaceH4/ultrafeedback_binarized", split="train_prefs")  # or "test_prefs"
    >>> ranked = from_ultrafeedback_binarized(dataset)
    ```

    Source schema:

    ```python
    {"prompt": "How do I ...?", "prompt_id": "5f2a...",  # sha256 of the prompt
     "chosen": [{"content": "How do I ...?", "role": "user"}, {"content": "...", "role": "assistant"}],
     "rejected": [{"content": "How do I ...?", "role": "user"}, {"content": "...", "role": "assistant"}],
     "messages": [...],  # = chosen
     "score_chosen": 8.5, "score_rejected": 7.0}
    ```

    Output: ``prompt`` = the messages before the final assistant turn (they must be identical in ``chosen`` and
    ``rejected``), ``completions`` = ``[[chosen's final assistant message], [rejected's]]``, ``scores`` =
    ``[score_chosen, score_rejected]`` taken as they are, so equal scores stay a tie.
    """
    columns = _require_columns(
        dataset, ("chosen", "rejected", "score_chosen", "score_rejected"), "from_ultrafeedback_binarized"
    )

    def convert_row(example: dict, index: int) -> dict:
        chosen = _required(example, "chosen", index, "chosen", list)
        rejected = _required(example, "rejected", index, "rejected", list)
        scores = [_required_number(example, name, index, name) for name in ("score_chosen", "score_rejected")]
        prompt, chosen_completion = _split_final_assistant(chosen, index, "chosen")
        rejected_prompt, rejected_completion = _split_final_assistant(rejected, index, "rejected")
        if rejected_prompt != prompt:
            _fail(index, "rejected", "its prompt messages differ from those of 'chosen'")
        row = {"prompt": prompt, "completions": [chosen_completion, rejected_completion], "scores": scores}
        origin = "completions[0] <- 'chosen', completions[1] <- 'rejected', scores <- 'score_chosen'/'score_rejected'"
        return _validated(row, index, origin)

    return _map_rows(dataset, convert_row, columns)


# ---------------------------------------------------------------------------------------------------------------------
# openai/summarize_from_feedback (comparisons)
# ---------------------------------------------------------------------------------------------------------------------
def from_summarize_from_feedback(dataset: AnyDataset) -> AnyDataset:
    """`openai/summarize_from_feedback` ``comparisons`` rows to K=2 ranked rows in TRL's TL;DR prompt format.

    ```python
    >>> dataset = load_dataset("openai/summarize_from_feedback", "comparisons", split="train")  # or "validation"
    >>> # datasets >= 4 no longer runs loading scripts; if the Hub repository still has one, load its Parquet export:
    >>> dataset = load_dataset(
    ...     "openai/summarize_from_feedback", "comparisons", split="train", revision="refs/convert/parquet"
    ... )
    >>> ranked = from_summarize_from_feedback(dataset)
    ```

    Source schema (the Hub loader's features):

    ```python
    {"info": {"id": "t3_2vwp1w", "post": "...", "title": "...", "subreddit": "relationships",
              "site": None, "article": None},  # CNN/DM rows: post and subreddit are None, article and site set
     "summaries": [{"text": " ...", "policy": "sup2", "note": None},
                   {"text": " ...", "policy": "ppo_xl", "note": None}],
     "choice": 1,  # index of the preferred summary
     "worker": "...", "batch": "batch3", "split": "train", "extra": {"confidence": None}}
    ```

    Output: ``prompt`` = ``"SUBREDDIT: r/{subreddit}\\n\\nTITLE: {title}\\n\\nPOST: {post}\\n\\nTL;DR:"`` for
    Reddit posts, or ``"Article:\\n{article}\\n\\nTL;DR:"`` for CNN/DM rows (``post`` is None), as TRL's
    ``examples/datasets/tldr_preference.py``; ``completions`` = the chosen then the rejected summary as
    ``" " + text.strip()`` (one separating space, as TRL's ``tldr.py``: the source texts already start with a space);
    ``scores`` = ``[1.0, 0.0]``.
    """
    columns = _require_columns(dataset, ("info", "summaries", "choice"), "from_summarize_from_feedback")

    def convert_row(example: dict, index: int) -> dict:
        info = _required(example, "info", index, "info", Mapping)
        summaries = _required(example, "summaries", index, "summaries", list)
        if len(summaries) != 2:
            _fail(index, "summaries", f"expected 2 summaries, got {len(summaries)}")
        texts = []
        for j, summary in enumerate(summaries):
            text = _required(summary, "text", index, f"summaries[{j}].text", str)
            if not text.strip():
                _fail(index, f"summaries[{j}].text", "empty summary")
            texts.append(" " + text.strip())
        choice = example.get("choice")
        if isinstance(choice, bool) or choice not in (0, 1):
            _fail(index, "choice", f"expected 0 or 1, got {choice!r}")
        if info.get("post") is not None:
            post = _required(info, "post", index, "info.post", str)
            title = _required(info, "title", index, "info.title", str)
            subreddit = _required(info, "subreddit", index, "info.subreddit", str)
            prompt = TLDR_PROMPT.format(subreddit=subreddit, title=title, post=post)
        elif info.get("article") is not None:
            prompt = CNNDM_PROMPT.format(article=_required(info, "article", index, "info.article", str))
        else:
            _fail(index, "info.post", "both 'info.post' (Reddit) and 'info.article' (CNN/DM) are missing or null")
        row = {"prompt": prompt, "completions": [texts[choice], texts[1 - choice]], "scores": [1.0, 0.0]}
        return _validated(row, index, f"completions <- 'summaries[{choice}]', 'summaries[{1 - choice}]'")

    return _map_rows(dataset, convert_row, columns)


# ---------------------------------------------------------------------------------------------------------------------
# Anthropic/hh-rlhf
# ---------------------------------------------------------------------------------------------------------------------
def parse_hh_dialogue(text: str, index: int = 0, field: str = "chosen") -> list[dict[str, str]]:
    """Split an hh-rlhf transcript ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` into chat messages.

    Turns are split on ``"\\n\\nHuman: "`` / ``"\\n\\nAssistant: "`` as TRL's
    ``examples/datasets/hh-rlhf-helpful-base.py`` does; contents are kept verbatim (a ``"\\n\\n"`` inside a turn
    stays in that turn).
    """
    if text.startswith(("Human:", "Assistant:")):
        text = "\n\n" + text
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        _fail(index, field, f"expected a transcript starting with '\\n\\nHuman: ', got {text[:60]!r}")
    return [
        {"role": _HH_ROLES[parts[i]], "content": parts[i + 1]}
        for i in range(1, len(parts), 2)  # parts = ["", role, content, role, content, ...]
    ]


def from_hh_rlhf(dataset: AnyDataset) -> AnyDataset:
    """`Anthropic/hh-rlhf` transcripts to K=2 conversational ranked rows with scores ``[1.0, 0.0]``.

    ```python
    >>> dataset = load_dataset("Anthropic/hh-rlhf", data_dir="helpful-base", split="train")  # or the full set
    >>> ranked = from_hh_rlhf(dataset)
    ```

    Source schema: ``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "\\n\\nHuman: ..."}``, two
    strings holding the whole dialogue, identical up to the final Assistant turn.

    Output: ``prompt`` = every turn before the final Assistant turn (user/assistant messages), ``completions`` =
    ``[[chosen's final assistant message], [rejected's]]``. A row whose chosen and rejected dialogues differ before
    the final turn, or that does not end with an Assistant turn, raises ``ValueError`` naming the row.
    """
    columns = _require_columns(dataset, ("chosen", "rejected"), "from_hh_rlhf")

    def convert_row(example: dict, index: int) -> dict:
        turns = {}
        for name in ("chosen", "rejected"):
            text = _required(example, name, index, name, str)
            messages = parse_hh_dialogue(text, index, name)
            if messages[-1]["role"] != "assistant":
                _fail(index, name, "the dialogue does not end with an 'Assistant:' turn")
            if len(messages) < 2:
                _fail(index, name, "no 'Human:' turn before the final 'Assistant:' turn")
            turns[name] = messages
        prompt = turns["chosen"][:-1]
        if turns["rejected"][:-1] != prompt:
            _fail(index, "rejected", "its dialogue before the final Assistant turn differs from that of 'chosen'")
        row = {"prompt": prompt, "completions": [turns["chosen"][-1:], turns["rejected"][-1:]], "scores": [1.0, 0.0]}
        return _validated(row, index, "completions[0] <- 'chosen', completions[1] <- 'rejected'")

    return _map_rows(dataset, convert_row, columns)


# ---------------------------------------------------------------------------------------------------------------------
# Many pairwise rows of one prompt -> one ranked list
# ---------------------------------------------------------------------------------------------------------------------
def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _find_cycle(remaining: set[int], edges: dict[tuple[int, int], list[int]]) -> list[int]:
    """A cycle among ``remaining`` nodes (each has a predecessor in ``remaining`` after Kahn's algorithm stalls)."""
    predecessors: dict[int, int] = {}
    for u, v in edges:
        if u in remaining and v in remaining:
            predecessors.setdefault(v, u)
    node, path, seen = min(remaining), [], {}
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = predecessors[node]
    cycle = path[seen[node] :][::-1]  # walked backwards along edges: reverse into preference order
    start = cycle.index(min(cycle))  # begin at the completion seen first, so the message is deterministic
    return cycle[start:] + cycle[:start]


def group_pairwise(dataset: AnyDataset) -> Dataset:
    """Merge the pairwise rows of each prompt into one ranked list, ordered by the preference graph.

    Input: TRL pairwise rows (explicit ``prompt``/``chosen``/``rejected``; an implicit prompt is extracted as in
    [`from_pairwise`]). Prompts are grouped by exact equality (JSON of the messages for conversational prompts),
    completions are compared by exact equality. Each pair adds an edge chosen -> rejected; the graph is sorted
    topologically and each completion gets its level (the longest chain of preferences above it). Scores are
    descending integers by level, as floats: the bottom level gets 0.0. Completions at the same level have no edge
    between them and get equal scores (ties), including unrelated completions (pairs A>B and C>D give A=C=1,
    B=D=0). Output rows follow the first appearance of each prompt; completions are sorted best first, ties in
    order of first appearance.

    A cycle (A>B, B>C, C>A, or a pair whose chosen equals its rejected) raises ``ValueError`` naming the rows whose
    pairs form it.

    ```python
    >>> pairs = load_dataset("trl-lib/ultrafeedback_binarized", split="train")
    >>> ranked = group_pairwise(pairs)
    ```
    """
    columns = _require_columns(dataset, ("chosen", "rejected"), "group_pairwise")
    explicit = "prompt" in columns
    groups: dict[str, dict[str, Any]] = {}
    total = 0
    for index, example in enumerate(dataset):
        total += 1
        prompt, chosen, rejected = _pairwise_parts(example, index, explicit)
        group = groups.setdefault(_key(prompt), {"prompt": prompt, "ids": {}, "completions": [], "edges": {}})
        ids = []
        for completion in (chosen, rejected):
            key = _key(completion)
            if key not in group["ids"]:
                group["ids"][key] = len(group["completions"])
                group["completions"].append(completion)
            ids.append(group["ids"][key])
        if ids[0] == ids[1]:
            _fail(index, "rejected", "identical to 'chosen': a completion cannot be preferred to itself")
        group["edges"].setdefault((ids[0], ids[1]), []).append(index)

    rows = []
    for group in groups.values():
        n = len(group["completions"])
        successors: list[list[int]] = [[] for _ in range(n)]
        in_degree = [0] * n
        for u, v in group["edges"]:
            successors[u].append(v)
            in_degree[v] += 1
        level = [0] * n
        queue = [u for u in range(n) if in_degree[u] == 0]
        visited = 0
        while queue:
            u = queue.pop(0)
            visited += 1
            for v in successors[u]:
                level[v] = max(level[v], level[u] + 1)
                in_degree[v] -= 1
                if in_degree[v] == 0:
                    queue.append(v)
        if visited < n:
            cycle = _find_cycle({u for u in range(n) if in_degree[u] > 0}, group["edges"])
            edges = list(zip(cycle, cycle[1:] + cycle[:1]))
            row_ids = sorted({i for edge in edges for i in group["edges"][edge]})
            chain = " > ".join(f"{group['completions'][u]!r:.40}" for u in [*cycle, cycle[0]])
            raise ValueError(
                f"rows {', '.join(map(str, row_ids))}, fields 'chosen'/'rejected': inconsistent pairs for the prompt "
                f"{group['prompt']!r:.60} form a preference cycle: {chain}"
            )
        top = max(level)
        order = sorted(range(n), key=lambda u: (level[u], u))
        rows.append(
            {
                "prompt": group["prompt"],
                "completions": [group["completions"][u] for u in order],
                "scores": [float(top - level[u]) for u in order],
            }
        )
    for r, row in enumerate(rows):
        _validated(row, r, "the pairs of one prompt (row = output row)")
    logger.info("group_pairwise: grouped %d pairwise rows into %d ranked rows.", total, len(rows))
    return _from_rows(rows)


# ---------------------------------------------------------------------------------------------------------------------
# Machine translation: ALMA-R's scored translations
# ---------------------------------------------------------------------------------------------------------------------
# ALMA's language names (fe1ixxu/ALMA, utils/utils.py LANG_TABLE); its prompts are always in English.
ALMA_LANGUAGES = {
    "en": "English",
    "de": "German",
    "fr": "French",
    "cs": "Czech",
    "is": "Icelandic",
    "zh": "Chinese",
    "ja": "Japanese",
    "ru": "Russian",
    "uk": "Ukrainian",
    "ha": "Hausa",
    "ro": "Romanian",
    "gu": "Gujarati",
}
ALMA_SCORES = ("kiwi_xcomet", "kiwi", "xcomet")
ALMA_SYSTEMS = ("gpt4", "alma", "ref")


def alma_prompt(source_lang: str, target_lang: str, source: str) -> str:
    """ALMA's translation prompt: ``Translate this from German to English:\nGerman: …\nEnglish:``."""
    src, tgt = ALMA_LANGUAGES[source_lang], ALMA_LANGUAGES[target_lang]
    return f"Translate this from {src} to {tgt}:\n{src}: {source}\n{tgt}:"


def from_alma_r(dataset: AnyDataset, source_lang: str, target_lang: str, score: str = "kiwi_xcomet") -> Dataset:
    """K=3 ranked translations from ``haoranxu/ALMA-R-Preference`` (Xu et al. 2024, ALMA-R / CPO).

    Source schema (one config per language pair, e.g. ``de-en``; one ``translation`` struct per row)::

        {"translation": {"de": str, "en": str,                         # the two sentences (references)
                         "gpt4_en": str, "alma_en": str,                # system translations into en
                         "gpt4_de": str, "alma_de": str,                # ... and into de
                         "{gpt4,alma,ref}_{en,de}_{kiwi,xcomet,kiwi_xcomet}": float,
                         "Delta": float, "language_pair": "de-en", "required_directions": str}}

    ```python
    >>> ds = load_dataset("haoranxu/ALMA-R-Preference", "de-en", split="train")
    >>> from_alma_r(ds, source_lang="de", target_lang="en", score="kiwi_xcomet")
    ```

    For the direction ``source_lang → target_lang`` each row gives the prompt in ALMA's format and the three
    candidates GPT-4, ALMA and the human reference (completions in that order, each with one leading space), scored
    by the reference-free metric ``score`` (``"kiwi_xcomet"``, the mean the ALMA-R paper ranks by, ``"kiwi"`` or
    ``"xcomet"``). Equal scores are ties, left to the trainer's tie policy. A NaN or missing score raises
    ``ValueError`` naming the row and field.

    Rows whose ``required_directions`` names another direction are skipped, as ALMA's own preprocessing does (a
    deliberate filter; the count is logged). ``Delta`` (human preference between GPT-4 and ALMA on a subset) is not
    used: the ranking is by the metric for all three candidates.
    """
    for lang in (source_lang, target_lang):
        if lang not in ALMA_LANGUAGES:
            raise ValueError(f"unknown language {lang!r}; ALMA's languages are {sorted(ALMA_LANGUAGES)}")
    if source_lang == target_lang:
        raise ValueError("source_lang and target_lang must differ")
    if score not in ALMA_SCORES:
        raise ValueError(f"unknown score {score!r}; expected one of {ALMA_SCORES}")
    _require_columns(dataset, ["translation"], "from_alma_r")
    rows, skipped = [], 0
    for index, example in enumerate(dataset):
        translation = example["translation"]
        if not isinstance(translation, Mapping):
            _fail(index, "translation", f"expected a struct, got {_type_name(translation)}")
        required = translation.get("required_directions") or ""
        if required and required.split("-")[-1] != target_lang:
            skipped += 1
            continue
        source = _required(translation, source_lang, index, f"translation.{source_lang}", str)
        completions, scores = [], []
        for system in ALMA_SYSTEMS:
            text_key = target_lang if system == "ref" else f"{system}_{target_lang}"
            text = _required(translation, text_key, index, f"translation.{text_key}", str)
            if not text.strip():
                _fail(index, f"translation.{text_key}", "empty translation")
            score_key = f"{system}_{target_lang}_{score}"
            value = translation.get(score_key)
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
                _fail(index, f"translation.{score_key}", f"expected a finite score, got {value!r}")
            completions.append(" " + text.strip())
            scores.append(float(value))
        rows.append(
            {"prompt": alma_prompt(source_lang, target_lang, source), "completions": completions, "scores": scores}
        )
    log = logger.warning if skipped else logger.info
    log(
        "from_alma_r %s-%s: skipped %d rows whose required_directions is another direction.",
        source_lang,
        target_lang,
        skipped,
    )
    for r, row in enumerate(rows):
        _validated(row, r, "translation.{gpt4,alma,ref} candidates (row = output row)")
    return _from_rows(rows)


# ---------------------------------------------------------------------------------------------------------------------
# Registry, auto-detection, Preferred-FT view
# ---------------------------------------------------------------------------------------------------------------------
CONVERTERS: dict[str, Callable[..., AnyDataset]] = {
    "ranked": from_ranked,
    "pairwise": from_pairwise,
    "ultrafeedback": from_ultrafeedback,
    "ultrafeedback_binarized": from_ultrafeedback_binarized,
    "summarize_from_feedback": from_summarize_from_feedback,
    "hh_rlhf": from_hh_rlhf,
    "group_pairwise": group_pairwise,
    "alma_r": from_alma_r,
}


def convert(dataset: AnyDataset, name: str, **kwargs: Any) -> AnyDataset:
    """Convert ``dataset`` with the converter registered as ``name`` and validate every output row.

    ```python
    >>> convert(load_dataset("Anthropic/hh-rlhf", split="train"), "hh_rlhf")
    >>> convert(load_dataset("openbmb/UltraFeedback", split="train"), "ultrafeedback", score="helpfulness")
    ```

    Keyword arguments go to the converter. Output rows of a `Dataset` are validated now (the error names the output
    row index); an `IterableDataset` is validated lazily as it is consumed.
    """
    if name not in CONVERTERS:
        raise ValueError(f"unknown converter {name!r}; valid keys: {sorted(CONVERTERS)}")
    converted = CONVERTERS[name](dataset, **kwargs)
    if name == "ranked":  # its converter is the validation
        return converted
    if isinstance(converted, IterableDataset):
        return _validate_lazily(converted)
    validate_ranked_dataset(converted)
    return converted


def to_ranked(dataset: AnyDataset) -> AnyDataset:
    """Auto-detect the format: ranked columns are validated and returned, TRL pairwise columns go through
    [`from_pairwise`]; anything else raises ``ValueError`` naming the columns found."""
    columns = _column_names(dataset)
    if is_ranked(columns):
        return from_ranked(dataset)
    if is_pairwise(columns):
        return from_pairwise(dataset)
    raise ValueError(
        f"cannot detect the format from the columns {columns}: expected ranked {list(RANKED_COLUMNS)} or pairwise "
        f"['prompt' (optional), 'chosen', 'rejected']; for a public source use convert(dataset, name) with name in "
        f"{sorted(CONVERTERS)}"
    )


def top_ranked_completions(dataset: AnyDataset) -> AnyDataset:
    """Prompt-completion rows (TRL's SFT format) holding each list's best completion, for Preferred-FT.

    Ties for the best score keep the first of the tied completions (``rank_order`` is stable). Pairwise input is
    converted with [`to_ranked`] first.
    """
    if not is_ranked(_column_names(dataset)):
        dataset = to_ranked(dataset)
    columns = _column_names(dataset)

    def best(example: dict, index: int) -> dict:
        validate_ranked_example(example, index)
        return {"prompt": example["prompt"], "completion": example["completions"][rank_order(example["scores"])[0]]}

    return dataset.map(best, with_indices=True, remove_columns=columns)
