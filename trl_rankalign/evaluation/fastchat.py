"""FastChat's MT-Bench judging rules (`fastchat/llm_judge`), reimplemented on its published file formats.

The judge prompts come from FastChat's own `data/judge_prompts.jsonl`, read from the path the user passes
([`load_judge_prompts`]); this package ships none of their text. The rules follow `gen_judgment.py` and `common.py`
(fschat 0.2.36, identical to FastChat's main for `llm_judge`):

- prompt choice ([`judge_prompt_name`]): categories in [`NEED_REF_CATS`] (math, reasoning, coding, arena-hard-200) get
  the reference-based prompts (`single-math-v1`, `pair-math-v1`) with the reference answers
  (`reference_answer/gpt-4.jsonl`), the others `single-v1` / `pair-v2`; turn 2 uses the `-multi-turn` forms, which show
  the whole conversation (pairwise: each model's own), and only questions with exactly two turns get a turn-2 judgment;
- a reply cut at the judge's token limit ([`TruncatedReply`]) is an error (-1 / `"error"`), the one deviation;
- a single score is the FIRST `[[n]]` of the reply, else the first `[n]` ([`parse_rating`]); none gives -1;
- a pairwise verdict is `[[A]]`, else `[[B]]`, else `[[C]]` (tie), checked in that order, else `"error"`
  ([`parse_verdict`]);
- a pair judged in both orders counts as a win only when both orders name the same model, and any tie or disagreement
  is a tie ([`pair_outcome`], as `show_result.py`); a pair with an error in either order is left out;
- the judge is asked with `temperature=0`, `max_tokens=2048`, the prompt's `system_prompt` as system message.

Judgment records are FastChat's (`model_judgment/<judge>_single.jsonl`, `<judge>_pair.jsonl`; [`single_record`],
[`pair_record`]), so `show_result.py` reads them.
"""

import ast
import json
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

from ..sampling.llm_judge import TruncatedReply


__all__ = [
    "JUDGE_MAX_TOKENS",
    "NEED_REF_CATS",
    "is_fastchat_answer",
    "judge_prompt_name",
    "load_fastchat_answers",
    "load_judge_prompts",
    "pair_outcome",
    "pair_record",
    "pair_user_prompt",
    "parse_rating",
    "parse_verdict",
    "single_record",
    "single_user_prompt",
]

NEED_REF_CATS = ("math", "reasoning", "coding", "arena-hard-200")  # common.NEED_REF_CATS
JUDGE_MAX_TOKENS = 2048  # common.run_judge_single / run_judge_pair with an OpenAI judge
SINGLE_PROMPTS = ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn")
PAIR_PROMPTS = ("pair-v2", "pair-math-v1", "pair-v2-multi-turn", "pair-math-v1-multi-turn")
_PROMPT_FIELDS = ("name", "type", "system_prompt", "prompt_template", "output_format")

# common.one_score_pattern and its backup
_ONE_SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_ONE_SCORE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def load_judge_prompts(path: str | os.PathLike, mode: str | None = None) -> dict[str, dict]:
    """FastChat's `judge_prompts.jsonl`: `{name: {"name", "type", "system_prompt", "prompt_template", "output_format",
    ...}}`. With `mode` (`"single"` or `"pair"`), the four prompts that mode uses must be present."""
    prompts = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: line {number + 1} is not JSON ({error.msg}).") from None
            missing = [field for field in _PROMPT_FIELDS if not isinstance(row.get(field), str)]
            if missing:
                raise ValueError(f"{path}: line {number + 1}, field '{missing[0]}': missing (FastChat's schema).")
            prompts[row["name"]] = row
    if mode is not None:
        needed = SINGLE_PROMPTS if mode == "single" else PAIR_PROMPTS
        missing = [name for name in needed if name not in prompts]
        if missing:
            raise ValueError(f"{path} has no judge prompt {missing}: pass FastChat's data/judge_prompts.jsonl.")
        expected = "[[rating]]" if mode == "single" else "[[A]]"
        other = [name for name in needed if prompts[name]["output_format"] != expected]
        if other:  # FastChat's parser is chosen by output_format; only these two are MT-Bench's
            raise ValueError(f"{path}: judge prompts {other} do not have output_format {expected!r}.")
    return prompts


def is_fastchat_answer(row: dict) -> bool:
    """A line of FastChat's `model_answer/<model>.jsonl` / `reference_answer/<judge>.jsonl` (`question_id`,
    `choices[{index, turns}]`)."""
    return isinstance(row, dict) and "question_id" in row and isinstance(row.get("choices"), list)


def load_fastchat_answers(source: str | os.PathLike | Sequence[dict]) -> dict:
    """`{question_id: [answer turn 1, answer turn 2, ...]}` from a FastChat answer file (`question_id`, `answer_id`,
    `model_id`, `choices: [{"index": 0, "turns": [...]}]`, `tstamp`): the first choice, as FastChat's judge reads it.
    A line without it is a `ValueError` naming the line and the field."""
    if isinstance(source, str | os.PathLike):
        with open(source, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    else:
        rows = list(source)
    answers = {}
    for index, row in enumerate(rows):
        if "question_id" not in row:
            raise ValueError(f"answer line {index}, field 'question_id': missing (FastChat's answer schema).")
        choices = row.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0].get("turns"), list):
            raise ValueError(f"answer line {index}, field 'choices[0].turns': missing (FastChat's answer schema).")
        answers[row["question_id"]] = [str(turn) for turn in choices[0]["turns"]]
    return answers


def judge_prompt_name(mode: str, category: str | None, turn: int) -> str:
    """The FastChat judge prompt for a question's `category` and 1-based `turn` (`gen_judgment.make_judge_*`)."""
    math = category in NEED_REF_CATS
    if mode == "single":
        name = "single-math-v1" if math else "single-v1"
    else:
        name = "pair-math-v1" if math else "pair-v2"
    return name + ("-multi-turn" if turn == 2 else "")


def _reference(reference: Sequence[str] | None, multi_turn: bool) -> dict:
    if reference is None:
        return {}
    if len(reference) < (2 if multi_turn else 1):
        raise ValueError(f"The reference answer has {len(reference)} turn(s); the {'second' if multi_turn else 'first'} "
                         "turn's judgment needs it.")  # fmt: skip
    kwargs = {"ref_answer_1": reference[0]}
    if multi_turn:
        kwargs["ref_answer_2"] = reference[1]
    return kwargs


def single_user_prompt(
    prompt: dict, questions: Sequence[str], answers: Sequence[str], reference: Sequence[str] | None = None
) -> str:
    """`run_judge_single`'s user prompt: turn 1 from `question`/`answer`, the `-multi-turn` prompt from both turns."""
    multi_turn = prompt["name"].endswith("multi-turn")
    kwargs = _reference(reference, multi_turn)
    if multi_turn:
        return prompt["prompt_template"].format(
            question_1=questions[0], question_2=questions[1], answer_1=answers[0], answer_2=answers[1], **kwargs
        )
    return prompt["prompt_template"].format(question=questions[0], answer=answers[0], **kwargs)


def pair_user_prompt(
    prompt: dict,
    questions: Sequence[str],
    answers_a: Sequence[str],
    answers_b: Sequence[str],
    reference: Sequence[str] | None = None,
) -> str:
    """`run_judge_pair`'s user prompt; the `-multi-turn` form shows each assistant's own two-turn conversation."""
    multi_turn = prompt["name"].endswith("multi-turn")
    kwargs = _reference(reference, multi_turn)
    if multi_turn:
        return prompt["prompt_template"].format(
            question_1=questions[0],
            question_2=questions[1],
            answer_a_1=answers_a[0],
            answer_b_1=answers_b[0],
            answer_a_2=answers_a[1],
            answer_b_2=answers_b[1],
            **kwargs,
        )
    return prompt["prompt_template"].format(
        question=questions[0], answer_a=answers_a[0], answer_b=answers_b[0], **kwargs
    )


def parse_rating(judgment: str) -> float | int:
    """FastChat's single-answer score: the first `[[n]]`, else the first `[n]`; -1 when there is none (FastChat's
    error value, which `show_result.py` drops). No range check, as FastChat. One deviation: a reply the judge client
    marks as cut at its token limit ([`TruncatedReply`]) is -1, as everywhere in this package."""
    if isinstance(judgment, TruncatedReply):
        return -1
    match = _ONE_SCORE.search(judgment or "") or _ONE_SCORE_BACKUP.search(judgment or "")
    return ast.literal_eval(match.groups()[0]) if match else -1


def parse_verdict(judgment: str) -> str:
    """FastChat's pairwise verdict (`output_format` `[[A]]`): `"A"` if `[[A]]` is in the reply, else `"B"` for
    `[[B]]`, else `"tie"` for `[[C]]`, else `"error"` (also for a [`TruncatedReply`], cut at its token limit)."""
    if isinstance(judgment, TruncatedReply):
        return "error"
    judgment = judgment or ""
    for tag, verdict in (("[[A]]", "A"), ("[[B]]", "B"), ("[[C]]", "tie")):
        if tag in judgment:
            return verdict
    return "error"


def pair_outcome(g1_winner: str, g2_winner: str) -> str:
    """`"win"`, `"loss"`, `"tie"` for `model_1`, or `"error"`, from the two games' winners as FastChat records them
    (`"model_1"`, `"model_2"`, `"tie"`, `"error"`; game 1 has model_1 as A, game 2 as B). `show_result.py`'s rule:
    a win only when both games name the same model; a tie in either game or a disagreement is a tie."""
    if "error" in (g1_winner, g2_winner):
        return "error"
    if g1_winner == "tie" or g1_winner != g2_winner:
        return "tie"
    return "win" if g1_winner == "model_1" else "loss"


def single_record(question_id, model: str, judge: Sequence[str], user_prompt: str, judgment: str, turn: int) -> dict:
    """One line of FastChat's `model_judgment/<judge>_single.jsonl` (`play_a_match_single`)."""
    return {
        "question_id": question_id,
        "model": model,
        "judge": list(judge),
        "user_prompt": user_prompt,
        "judgment": judgment,
        "score": parse_rating(judgment),
        "turn": turn,
        "tstamp": time.time(),
    }


def pair_record(
    question_id,
    model_1: str,
    model_2: str,
    judge: Sequence[str],
    games: Sequence[tuple[str, str]],
    turn: int,
) -> dict:
    """One line of FastChat's `model_judgment/<judge>_pair.jsonl` (`play_a_match_pair`): `games` are
    `(user_prompt, judgment)` of game 1 (model_1 as A) and game 2 (model_2 as A)."""
    (g1_prompt, g1_judgment), (g2_prompt, g2_judgment) = games
    g1 = {"A": "model_1", "B": "model_2"}.get(parse_verdict(g1_judgment), parse_verdict(g1_judgment))
    g2 = {"A": "model_2", "B": "model_1"}.get(parse_verdict(g2_judgment), parse_verdict(g2_judgment))
    return {
        "question_id": question_id,
        "model_1": model_1,
        "model_2": model_2,
        "g1_winner": g1,
        "g2_winner": g2,
        "judge": list(judge),
        "g1_user_prompt": g1_prompt,
        "g1_judgment": g1_judgment,
        "g2_user_prompt": g2_prompt,
        "g2_judgment": g2_judgment,
        "turn": turn,
        "tstamp": time.time(),
    }


def judgment_file(bench_dir: str | os.PathLike, judge_model: str, mode: str) -> Path:
    """`<bench_dir>/model_judgment/<judge_model>_single.jsonl` or `_pair.jsonl`, FastChat's path; a `/` in the judge
    model's name (a hub id) becomes `_`, so the file stays inside `model_judgment/`."""
    name = judge_model.replace("/", "_").replace("\\", "_")
    if not name.strip(".") or name.startswith("."):
        raise ValueError(f"Judge model name {judge_model!r} cannot name a judgment file.")
    return Path(bench_dir) / "model_judgment" / f"{name}_{'single' if mode == 'single' else 'pair'}.jsonl"
