"""Export answers to the input formats of AlpacaEval, MT-Bench and Arena-Hard, to run those harnesses on them.

- AlpacaEval (`alpaca_eval --model_outputs outputs.json`): a JSON list of `{"instruction", "output", "generator"}`
  with an optional `"dataset"`, one per instruction.
- MT-Bench (FastChat `fastchat/llm_judge`): `data/mt_bench/model_answer/<model_id>.jsonl`, one line per question
  `{"question_id", "answer_id", "model_id", "choices": [{"index": 0, "turns": [answer, ...]}], "tstamp"}`: every turn
  of multi-turn answers ([`trl_rankalign.sampling.multi_turn`]), or the one answer of single-turn ones.
- Arena-Hard (`arena-hard-auto`, v2 layout): `data/<bench>/model_answer/<model>.jsonl`, one line per question
  `{"uid", "ans_id", "model", "messages": [{"role": "user", "content"}, {"role": "assistant", "content": {"answer"}}],
  "tstamp", "metadata": {"token_len", "header_count", "list_count", "bold_count"}}`: the metadata of arena-hard-auto's
  `utils/add_markdown_info.py`, which `show_result.py`'s style control (`-f length`, `markdown`) reads.
"""

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from ..sampling.answers import answer_text, load_answers, prompt_text


__all__ = ["arena_hard_metadata", "to_alpaca_eval", "to_arena_hard", "to_mt_bench"]

logger = logging.getLogger(__name__)
_CODE_BLOCK = re.compile("```([^`]*)```")


def _markdown_counts(text: str) -> dict:
    """arena-hard-auto's `count_markdown_elements` (headers h1-h6, ordered/unordered list items, bold `**`/`__`)."""
    return {
        "header_count": {f"h{n}": len(re.findall(rf"^#{{{n}}}\s", text, re.MULTILINE)) for n in range(1, 7)},
        "list_count": {
            "ordered": len(re.findall(r"^\s*\d+\.\s", text, re.MULTILINE)),
            "unordered": len(re.findall(r"^\s*[-*+]\s", text, re.MULTILINE)),
        },
        "bold_count": {"**": len(re.findall(r"\*\*[^*\n]+\*\*", text)), "__": len(re.findall(r"__[^_\n]+__", text))},
    }


def _token_counter(tokenizer=None):
    """`(count, name)`: tiktoken's `o200k_base` (gpt-4o's, what arena-hard-auto counts with) when tiktoken is installed
    and its encoding loads, else `tokenizer`'s tokens, else whitespace words."""
    try:
        import tiktoken

        encoder = tiktoken.get_encoding("o200k_base")
        return (lambda text: len(encoder.encode(text, disallowed_special=()))), "tiktoken:o200k_base"
    except Exception:  # not installed, or the encoding file cannot be fetched (offline)
        pass
    if tokenizer is not None:
        return (lambda text: len(tokenizer(text)["input_ids"])), f"tokenizer:{getattr(tokenizer, 'name_or_path', '')}"
    return (lambda text: len(text.split())), "whitespace"


def arena_hard_metadata(answer: str, count_tokens) -> dict:
    """`{"token_len", "header_count", "list_count", "bold_count"}` as arena-hard-auto's `add_markdown_info.py` writes
    them: tokens of the whole answer, markdown elements counted with code blocks removed."""
    stripped = answer
    for block in _CODE_BLOCK.findall(answer):
        stripped = stripped.replace(block, "")
    return {"token_len": count_tokens(answer), **_markdown_counts(stripped)}


def _instruction(prompt) -> str:
    """AlpacaEval instructions are single strings: the prompt itself, or the last user message of a conversation."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else prompt_text(prompt)


def to_alpaca_eval(
    answers: str | os.PathLike | Sequence[dict],
    model_name: str,
    output_file: str | os.PathLike,
    dataset: str | Sequence[str] | None = None,
) -> list[dict]:
    """
    Write AlpacaEval's `model_outputs` JSON: `[{"instruction", "output", "generator", "dataset"?}]` in prompt order.

    Args:
        model_name: the `generator` field, the name AlpacaEval's leaderboard shows.
        dataset: the `dataset` field (one string for all rows, or one per row), e.g. `"helpful_base"`; by default a
            row's own `dataset` column (AlpacaEval's `alpaca_eval.json` has one, carried into the answers by
            `eval generate`) when it has one, else left out.

    Returns:
        The written records.
    """
    rows = load_answers(answers)
    records = []
    for i, row in enumerate(rows):
        record = {
            "instruction": _instruction(row["prompt"]),
            "output": answer_text(row["completions"][0]),
            "generator": model_name,
        }
        if dataset is not None:
            record["dataset"] = dataset if isinstance(dataset, str) else dataset[i]
        elif row.get("dataset") is not None:
            record["dataset"] = row["dataset"]
        records.append(record)
    Path(output_file).parent.mkdir(parents=True, exist_ok=True)
    with open(output_file, "w", encoding="utf-8") as f:
        json.dump(records, f, indent=2, ensure_ascii=False)
    return records


def to_mt_bench(
    answers: str | os.PathLike | Sequence[dict],
    model_id: str,
    bench_dir: str | os.PathLike,
    question_ids: Sequence[int] | None = None,
) -> str:
    """
    Write FastChat's MT-Bench answer file `<bench_dir>/model_answer/<model_id>.jsonl` (e.g. `bench_dir` =
    `FastChat/fastchat/llm_judge/data/mt_bench`), sorted by `question_id` as FastChat's `reorg_answer_file` leaves it.

    Args:
        model_id: the `model_id` field and the file name, what `gen_judgment.py --model-list` takes.
        question_ids: the question id of each prompt set row (MT-Bench's own ids are 81-160), indexed by the
            answers' `index`; by default `index + 1`.

    Returns:
        The path written.
    """
    multi_turn = isinstance(answers, Sequence) and not isinstance(answers, str) and answers and "answers" in answers[0]
    rows = list(answers) if multi_turn else load_answers(answers)
    path = Path(bench_dir) / "model_answer" / f"{model_id}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for row in rows:
        if multi_turn:  # rows of `generate_multi_turn_answers`: every turn
            question_id, turns = row["question_id"], list(row["answers"])
        else:
            question_id = row["index"] + 1 if question_ids is None else question_ids[row["index"]]
            turns = [answer_text(row["completions"][0])]
        lines.append(
            {
                "question_id": question_id,
                "answer_id": uuid.uuid4().hex[:22],
                "model_id": model_id,
                "choices": [{"index": 0, "turns": turns}],
                "tstamp": time.time(),
            }
        )
    lines.sort(key=lambda line: line["question_id"])
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    return str(path)


def to_arena_hard(
    answers: str | os.PathLike | Sequence[dict],
    model: str,
    bench_dir: str | os.PathLike,
    uids: Sequence[str] | None = None,
    tokenizer=None,
) -> str:
    """
    Write Arena-Hard-Auto's answer file `<bench_dir>/model_answer/<model>.jsonl` (e.g. `bench_dir` =
    `arena-hard-auto/data/arena-hard-v2.0`).

    Args:
        model: the `model` field and the file name (what its judgment config's model list takes).
        uids: the question `uid` of each prompt set row, indexed by the answers' `index` (Arena-Hard's
            `question.jsonl` order); by default every answer row's own `uid`. Without either it is a `ValueError`:
            answers under made-up uids are silently never judged by `gen_judgment.py`.
        tokenizer: counts `metadata.token_len` when tiktoken (`o200k_base`, arena-hard-auto's own count) is not
            installed; whitespace words without either. The encoder used is logged.
    """
    rows = load_answers(answers)
    if uids is None and any(row.get("uid") in (None, "") for row in rows):
        raise ValueError(
            "Arena-Hard answers need each question's uid: pass the bench's question.jsonl as --prompts (its `uid` "
            "column), or answers that carry a `uid`."
        )
    count_tokens, encoder = _token_counter(tokenizer)
    logger.info("Arena-Hard export: token_len counted with %s", encoder)
    path = Path(bench_dir) / "model_answer" / f"{model}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for row in rows:
        uid = str(uids[row["index"]] if uids is not None else row["uid"])
        answer = answer_text(row["completions"][0])
        lines.append(
            {
                "uid": uid,
                "ans_id": uuid.uuid4().hex[:22],
                "model": model,
                "messages": [
                    {"role": "user", "content": _instruction(row["prompt"])},
                    {"role": "assistant", "content": {"answer": answer}},
                ],
                "tstamp": time.time(),
                "metadata": arena_hard_metadata(answer, count_tokens),
            }
        )
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    return str(path)


def token_encoder_name(tokenizer=None) -> str:
    """Which encoder [`to_arena_hard`] counts `token_len` with: `tiktoken:o200k_base`, `tokenizer:...` or
    `whitespace`."""
    return _token_counter(tokenizer)[1]
