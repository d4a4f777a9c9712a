"""Export answers to the input formats of AlpacaEval, MT-Bench and Arena-Hard, to run those harnesses on them.

- AlpacaEval (`alpaca_eval --model_outputs outputs.json`): a JSON list of `{"instruction", "output", "generator"}`
  with an optional `"dataset"`, one per instruction.
- MT-Bench (FastChat `fastchat/llm_judge`): `data/mt_bench/model_answer/<model_id>.jsonl`, one line per question
  `{"question_id", "answer_id", "model_id", "choices": [{"index": 0, "turns": [answer, ...]}], "tstamp"}`: every turn
  of multi-turn answers ([`trl_rankalign.sampling.multi_turn`]), or the one answer of single-turn ones.
- Arena-Hard (`arena-hard-auto`, v2 layout): `data/<bench>/model_answer/<model>.jsonl`, one line per question
  `{"uid", "ans_id", "model", "messages": [{"role": "user", "content"}, {"role": "assistant", "content": {"answer"}}],
  "tstamp", "metadata": {"token_len"}}`.
"""

import json
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from ..sampling.answers import answer_text, load_answers, prompt_text


__all__ = ["to_alpaca_eval", "to_arena_hard", "to_mt_bench"]


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
        dataset: the `dataset` field (one string for all rows, or one per row), e.g. `"helpful_base"`; left out when
            `None`.

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
            `question.jsonl` order); by default the row's own `uid` column, else its index as a string.
        tokenizer: counts `metadata.token_len` (Arena-Hard's length control uses it); whitespace words otherwise.
    """
    rows = load_answers(answers)
    path = Path(bench_dir) / "model_answer" / f"{model}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for row in rows:
        uid = uids[row["index"]] if uids is not None else str(row.get("uid", row["index"]))
        answer = answer_text(row["completions"][0])
        token_len = len(tokenizer(answer)["input_ids"]) if tokenizer is not None else len(answer.split())
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
                "metadata": {"token_len": token_len},
            }
        )
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    return str(path)
