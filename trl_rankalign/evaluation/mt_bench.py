"""MT-Bench grading with an LLM judge, per turn: single-answer 1-10 scores, or pairwise against a baseline.

Inputs are multi-turn answer rows (`question_id`, `category`, `turns`, `answers`; from
[`trl_rankalign.sampling.multi_turn.generate_multi_turn_answers`]); the baseline may also be a FastChat answer file
(`model_answer/gpt-3.5-turbo.jsonl`, `reference_answer/gpt-4.jsonl`: `question_id`, `choices[{index, turns}]`).

Two prompt sets:

- FastChat's (`judge_prompts`: the path of FastChat's `data/judge_prompts.jsonl`, or its loaded dict): the prompts,
  reference answers, parsing and counting of FastChat's `gen_judgment.py` / `show_result.py`, see
  [`trl_rankalign.evaluation.fastchat`]: turn 1 with `single-v1` / `pair-v2` (`*-math-v1` with the reference answer
  for math, reasoning and coding), turn 2 with their `-multi-turn` forms for questions of exactly two turns.
- the built-in offline prompts (the default): every turn judged in its whole conversation (`### User` /
  `### Assistant` transcript; pairwise, each model's own conversation), asked about the last answer.

Either way the rules are FastChat's: the first `[[n]]` (else `[n]`) is the score, -1 when there is none; a pair is a
win only when both orders name the same model, any tie or disagreement a tie; an error in either order leaves the pair
out. Judgments are written in FastChat's layout (`model_judgment/<judge>_single.jsonl`, `<judge>_pair.jsonl`, one
record per judgment, `turn` 1-based, `judge` = `[judge_model, prompt_name]`), so FastChat's `show_result.py` reads
them; that file is also the cache: a record is reused when model(s), judge, question, turn and the exact user
prompt(s) match and it parsed, so a rerun asks only what is missing or failed. When a run ends, records of the same
model(s), judge model, question and turn that were superseded (answers changed, an error re-asked, another prompt set)
are dropped, so FastChat's averages count each judgment once.
"""

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..sampling.fingerprint import short_hash
from ..sampling.http import EndpointError, is_refusal
from ..sampling.jsonl import append_jsonl, repair_jsonl, write_jsonl
from ..sampling.llm_judge import JudgeClient
from . import fastchat


__all__ = ["MTBenchResult", "PAIRWISE_SYSTEM_PROMPT", "SINGLE_SYSTEM_PROMPT", "judge_pairwise", "judge_single"]

logger = logging.getLogger(__name__)

SINGLE_SYSTEM_PROMPT = (
    "You are a careful and impartial judge of an AI assistant's answers. You will see a conversation between a user "
    "and the assistant. Rate only the assistant's answer to the user's last question, considering helpfulness, "
    "relevance, accuracy, depth, creativity and level of detail; earlier turns are context. Explain briefly, then give "
    'your rating from 1 to 10 on the last line, strictly in this format: "Rating: [[5]]".'
)
PAIRWISE_SYSTEM_PROMPT = (
    "You are a careful and impartial judge. You will see two conversations between the same user and two AI "
    "assistants, A and B. Compare only their answers to the user's last question; earlier turns are context. Do not "
    "let the order of the assistants or the length of the answers influence you. Explain briefly, then give your "
    'verdict on the last line: "[[A]]" if A is better, "[[B]]" if B is better, "[[C]]" for a tie.'
)
_BUILTIN = {SINGLE_SYSTEM_PROMPT: "rankalign-single-v1", PAIRWISE_SYSTEM_PROMPT: "rankalign-pair-v1"}


@dataclass
class MTBenchResult:
    """Per-turn and overall results: mean scores (single), or win rates with ties as halves (pairwise, FastChat's
    `win_rate_adjusted`). `judged` counts the judgments (single) or pairs (pairwise) used, `errors` those left out;
    `judgment_file` is FastChat's judgment file written, when one was."""

    mode: str
    per_turn: dict[int, float]
    overall: float | None
    judged: int
    errors: int
    wins: int = 0
    ties: int = 0
    losses: int = 0
    prompts: str = "builtin"
    judgment_file: str | None = None
    per_judgment: list[dict] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("per_judgment")
        return data


def _transcript(turns: Sequence[str], answers: Sequence[str], turn: int, name: str = "Assistant") -> str:
    lines = []
    for t in range(turn + 1):
        lines.append(f"### User:\n{turns[t]}")
        lines.append(f"### {name}:\n{answers[t]}")
    return "\n\n".join(lines)


def _answers_by_question(source) -> dict:
    """`{question_id: [answers]}` from multi-turn rows, FastChat answer lines, a FastChat answer file or a dict."""
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return {qid: list(turns) for qid, turns in source.items()}
    if isinstance(source, str | os.PathLike):
        return fastchat.load_fastchat_answers(source)
    rows = list(source)
    if rows and fastchat.is_fastchat_answer(rows[0]):
        return fastchat.load_fastchat_answers(rows)
    answers = {}
    for index, row in enumerate(rows):
        if "question_id" not in row or not isinstance(row.get("answers"), list):
            raise ValueError(
                f"answers row {index}, field 'answers': missing; expected multi-turn answers (eval generate "
                "--multi_turn) or FastChat's answer schema (question_id, choices[{index, turns}])."
            )
        answers[row["question_id"]] = list(row["answers"])
    return answers


def _prompts(judge_prompts, mode: str) -> dict | None:
    if judge_prompts is None or isinstance(judge_prompts, Mapping):
        return judge_prompts
    return fastchat.load_judge_prompts(judge_prompts, mode)


def _check_references(rows, prompts, references) -> None:
    if prompts is None:
        return
    needed = [row["question_id"] for row in rows if row.get("category") in fastchat.NEED_REF_CATS]
    missing = [qid for qid in needed if qid not in references]
    if missing:
        raise ValueError(
            f"Questions {missing[:5]} (math, reasoning, coding) are graded against reference answers: pass "
            "--reference_answers (FastChat's data/mt_bench/reference_answer/gpt-4.jsonl) covering them."
        )


def _turns(row: dict, prompts, other_answers: Sequence[str] | None = None) -> list[int]:
    """1-based turns to judge: FastChat's prompts judge turn 1, and turn 2 of questions of exactly two turns."""
    count = min(len(row["answers"]), len(other_answers) if other_answers is not None else len(row["answers"]))
    if prompts is None:
        return list(range(1, count + 1))
    return [1] + ([2] if len(row["turns"]) == 2 and count >= 2 else [])


def _load(cache_file) -> list[dict]:
    if cache_file is None or not Path(cache_file).exists():
        return []
    return repair_jsonl(cache_file)


def _compact(cache_file, used: list[dict], slot) -> None:
    """Keep, per slot (model(s), judge model, question, turn) this run graded, only the record it used (whatever prompt
    set an older record was made with: FastChat's averages do not tell prompt sets apart); leave every other line of
    the file as it was."""
    if cache_file is None:
        return
    latest = {slot(record): record for record in used}
    kept = [record for record in _load(cache_file) if slot(record) not in latest]
    write_jsonl(cache_file, kept + list(latest.values()))


def _ask(client: JudgeClient, system_prompt: str, user_prompt: str) -> str:
    """The judge's reply; `""` when the judge refused this one request (HTTP 400/413/422): FastChat's parsers then
    give -1 / "error", counted as a parse error and asked again on the next run, and the other judgments go on."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    try:
        return client.chat(messages + [{"role": "user", "content": user_prompt}])
    except EndpointError as error:
        if not is_refusal(error):
            raise
        logger.warning("The judge refused one judgment (counted as an error, asked again next run): %s", error)
        return ""


def judge_single(
    rows: Sequence[dict],
    client: JudgeClient,
    cache_file: str | os.PathLike | None = None,
    system_prompt: str = SINGLE_SYSTEM_PROMPT,
    *,
    model_name: str = "model",
    judge_prompts: str | os.PathLike | Mapping | None = None,
    reference_answers=None,
) -> MTBenchResult:
    """
    Single-answer grading: a 1-10 score per (question, turn), averaged per turn and over all turns (as FastChat's
    `display_result_single`).

    Args:
        cache_file: FastChat's `model_judgment/<judge>_single.jsonl`, written and reused (see the module docstring).
        system_prompt: the built-in prompt set's system prompt (ignored with `judge_prompts`).
        model_name: the `model` of the records (what `show_result.py` shows).
        judge_prompts: FastChat's `judge_prompts.jsonl` (path or loaded dict); `None`: the built-in prompts.
        reference_answers: FastChat's `reference_answer/gpt-4.jsonl` (path, lines or `{question_id: turns}`), needed
            for math, reasoning and coding questions with FastChat's prompts.
    """
    prompts = _prompts(judge_prompts, "single")
    references = _answers_by_question(reference_answers)
    _check_references(rows, prompts, references)
    cache = {}
    for record in _load(cache_file):
        if record.get("score", -1) != -1 and "model" in record:
            key = (
                record["model"],
                tuple(record["judge"]),
                record["question_id"],
                record["turn"],
                record["user_prompt"],
            )
            cache[key] = record
    scores: dict[int, list[float]] = {}
    used, errors = [], 0
    for row in rows:
        for turn in _turns(row, prompts):
            if prompts is None:
                name = _BUILTIN.get(system_prompt) or f"custom-{short_hash(system_prompt)[:8]}"
                system, user_prompt = system_prompt, _transcript(row["turns"], row["answers"], turn - 1)
            else:
                name = fastchat.judge_prompt_name("single", row.get("category"), turn)
                prompt = prompts[name]
                reference = references.get(row["question_id"]) if name.startswith("single-math") else None
                system = prompt["system_prompt"]
                user_prompt = fastchat.single_user_prompt(prompt, row["turns"], row["answers"], reference)
            judge = (client.model, name)
            record = cache.get((model_name, judge, row["question_id"], turn, user_prompt))
            if record is None:
                judgment = _ask(client, system, user_prompt)
                record = fastchat.single_record(row["question_id"], model_name, judge, user_prompt, judgment, turn)
                if cache_file is not None:
                    append_jsonl(cache_file, [record])
            used.append(record)
            if record["score"] == -1:
                errors += 1
                continue
            scores.setdefault(turn, []).append(record["score"])
    _compact(cache_file, used, lambda r: (r.get("model"), (r.get("judge") or [None])[0], r["question_id"], r["turn"]))
    per_turn = {turn: sum(values) / len(values) for turn, values in sorted(scores.items())}
    flat = [v for values in scores.values() for v in values]
    return MTBenchResult(
        "single",
        per_turn,
        sum(flat) / len(flat) if flat else None,
        len(flat),
        errors,
        prompts="builtin" if prompts is None else "fastchat",
        judgment_file=None if cache_file is None else str(cache_file),
        per_judgment=used,
    )


def judge_pairwise(
    rows: Sequence[dict],
    baseline_rows,
    client: JudgeClient,
    cache_file: str | os.PathLike | None = None,
    system_prompt: str = PAIRWISE_SYSTEM_PROMPT,
    *,
    model_name: str = "model",
    baseline_name: str = "baseline",
    judge_prompts: str | os.PathLike | Mapping | None = None,
    reference_answers=None,
) -> MTBenchResult:
    """
    Pairwise grading of `rows` (model_1) against the baseline (model_2), matched by `question_id`: per turn, both
    orders (game 1: the model as A; game 2: the baseline as A). The win rate counts ties as halves, per turn and
    overall (`show_result.py`'s `win_rate_adjusted`).

    Args:
        baseline_rows: the baseline's multi-turn answer rows, or FastChat's answer file / lines (`question_id`,
            `choices[{index, turns}]`, e.g. `model_answer/gpt-3.5-turbo.jsonl`), or `{question_id: turns}`.
        cache_file: FastChat's `model_judgment/<judge>_pair.jsonl`.
        model_name, baseline_name: `model_1` and `model_2` of the records.
        judge_prompts, reference_answers: as [`judge_single`].
    """
    prompts = _prompts(judge_prompts, "pair")
    baseline = _answers_by_question(baseline_rows)
    missing = [row["question_id"] for row in rows if row["question_id"] not in baseline]
    if missing:
        raise ValueError(f"The baseline has no answers for questions {missing[:5]}: answer the same question set.")
    references = _answers_by_question(reference_answers)
    _check_references(rows, prompts, references)
    cache = {}
    for record in _load(cache_file):
        if "g1_winner" in record:
            key = (record["model_1"], record["model_2"], tuple(record["judge"]), record["question_id"], record["turn"])
            cache[key + (record["g1_user_prompt"], record["g2_user_prompt"])] = record
    outcomes: dict[int, list[float]] = {}
    counts = {"win": 0, "tie": 0, "loss": 0, "error": 0}
    used = []
    for row in rows:
        other = baseline[row["question_id"]]
        for turn in _turns(row, prompts, other):
            if prompts is None:
                name = _BUILTIN.get(system_prompt) or f"custom-{short_hash(system_prompt)[:8]}"
                system = system_prompt
                t, questions = turn - 1, row["turns"]  # each model's own conversation up to this turn
                user_prompts = (
                    f"{_transcript(questions, row['answers'], t, 'Assistant A')}\n\n"
                    f"{_transcript(questions, other, t, 'Assistant B')}",
                    f"{_transcript(questions, other, t, 'Assistant A')}\n\n"
                    f"{_transcript(questions, row['answers'], t, 'Assistant B')}",
                )
            else:
                name = fastchat.judge_prompt_name("pair", row.get("category"), turn)
                prompt = prompts[name]
                reference = references.get(row["question_id"]) if name.startswith("pair-math") else None
                system = prompt["system_prompt"]
                user_prompts = (
                    fastchat.pair_user_prompt(prompt, row["turns"], row["answers"], other, reference),
                    fastchat.pair_user_prompt(prompt, row["turns"], other, row["answers"], reference),
                )
            judge = (client.model, name)
            previous = cache.get((model_name, baseline_name, judge, row["question_id"], turn, *user_prompts))
            games = []
            for game, user_prompt in enumerate(user_prompts):
                if previous is not None and previous[f"g{game + 1}_winner"] != "error":
                    games.append((user_prompt, previous[f"g{game + 1}_judgment"]))
                else:  # not judged yet, or FastChat could not parse the verdict: ask (again)
                    games.append((user_prompt, _ask(client, system, user_prompt)))
            record = fastchat.pair_record(row["question_id"], model_name, baseline_name, judge, games, turn)
            if previous is not None and record["g1_judgment"] == previous["g1_judgment"]:
                if record["g2_judgment"] == previous["g2_judgment"]:
                    record = previous
            if record is not previous and cache_file is not None:
                append_jsonl(cache_file, [record])
            used.append(record)
            outcome = fastchat.pair_outcome(record["g1_winner"], record["g2_winner"])
            counts[outcome] += 1
            if outcome != "error":
                outcomes.setdefault(turn, []).append({"win": 1.0, "tie": 0.5, "loss": 0.0}[outcome])
    _compact(
        cache_file,
        used,
        lambda r: (r.get("model_1"), r.get("model_2"), (r.get("judge") or [None])[0], r["question_id"], r["turn"]),
    )
    per_turn = {turn: sum(values) / len(values) for turn, values in sorted(outcomes.items())}
    flat = [v for values in outcomes.values() for v in values]
    return MTBenchResult(
        "pairwise",
        per_turn,
        sum(flat) / len(flat) if flat else None,
        len(flat),
        counts["error"],
        wins=counts["win"],
        ties=counts["tie"],
        losses=counts["loss"],
        prompts="builtin" if prompts is None else "fastchat",
        judgment_file=None if cache_file is None else str(cache_file),
        per_judgment=used,
    )
