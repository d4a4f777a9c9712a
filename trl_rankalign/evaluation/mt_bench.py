"""MT-Bench grading with an LLM judge, as MT-Bench does it: single-answer 1-10 scores per turn, and pairwise per turn.

Inputs are multi-turn answer rows (`question_id`, `turns`, `answers`; from
[`trl_rankalign.sampling.multi_turn.generate_multi_turn_answers`]). Turn t is judged in its whole conversation: the
judge sees every earlier user turn and the model's own earlier answers, and is asked about the answer to turn t only.

- [`judge_single`]: one request per (question, turn); the reply's `[[rating]]` (1-10) is the score.
- [`judge_pairwise`]: two models' answers to the same turn, judged in both orders (A/B swapped, cancelling position
  bias; [`combine_orders`]), for a win / tie / loss per (question, turn).

Both are cached in a JSONL file, one line per judgment keyed on everything that changes it (judge model, template,
question, both conversations); a rerun asks only what is missing. A reply that cannot be parsed is recorded as an error
and asked again on the next run (never cached as final); the results count errors apart.
"""

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from ..sampling.fingerprint import short_hash
from ..sampling.jsonl import append_jsonl, repair_jsonl
from ..sampling.llm_judge import JudgeClient, VerdictParseError, parse_pairwise_verdict, parse_rating
from .win_rate import combine_orders


__all__ = ["MTBenchResult", "SINGLE_SYSTEM_PROMPT", "judge_pairwise", "judge_single"]

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


@dataclass
class MTBenchResult:
    """Per-turn and overall results: mean scores (single) or win rates with ties as halves (pairwise)."""

    mode: str
    per_turn: dict[int, float]
    overall: float | None
    judged: int
    errors: int

    def to_dict(self) -> dict:
        return asdict(self)


def _transcript(turns: Sequence[str], answers: Sequence[str], turn: int, name: str = "Assistant") -> str:
    lines = []
    for t in range(turn + 1):
        lines.append(f"### User:\n{turns[t]}")
        lines.append(f"### {name}:\n{answers[t]}")
    return "\n\n".join(lines)


def _cached(cache_file, key_field: str = "key") -> dict:
    if cache_file is None or not Path(cache_file).exists():
        return {}
    return {row[key_field]: row for row in repair_jsonl(cache_file) if row.get("error") is None}


def _judgment(
    cache: dict,
    cache_file,
    client: JudgeClient,
    system_prompt: str,
    row: dict,
    turn: int,
    content: str,
    field: str,
    parse,
) -> dict:
    """The cached judgment of `content` for (question, turn), else a new one: the judge's reply, `parse(reply)` under
    `field`, or the parse error under `"error"` (appended to `cache_file`, asked again next run)."""
    key = short_hash([client.model, system_prompt, row["question_id"], turn, content])
    record = cache.get(key)
    if record is None:
        reply = client.chat([{"role": "system", "content": system_prompt}, {"role": "user", "content": content}])
        record = {"key": key, "question_id": row["question_id"], "turn": turn, "reply": reply}
        try:
            record[field] = parse(reply)
        except VerdictParseError as error:
            record["error"] = str(error)[:200]
        if cache_file is not None:
            append_jsonl(cache_file, [record])
    return record


def judge_single(
    rows: Sequence[dict],
    client: JudgeClient,
    cache_file: str | os.PathLike | None = None,
    system_prompt: str = SINGLE_SYSTEM_PROMPT,
) -> MTBenchResult:
    """Single-answer grading: a 1-10 score per (question, turn), averaged per turn and over all turns."""
    cache = _cached(cache_file)
    scores: dict[int, list[float]] = {}
    errors = 0
    for row in rows:
        for turn in range(len(row["answers"])):
            transcript = _transcript(row["turns"], row["answers"], turn)
            record = _judgment(
                cache,
                cache_file,
                client,
                system_prompt,
                row,
                turn,
                transcript,
                "rating",
                partial(parse_rating, low=1, high=10),
            )
            if record.get("error") is not None:
                errors += 1
                continue
            scores.setdefault(turn + 1, []).append(record["rating"])
    per_turn = {turn: sum(values) / len(values) for turn, values in sorted(scores.items())}
    flat = [v for values in scores.values() for v in values]
    return MTBenchResult("single", per_turn, sum(flat) / len(flat) if flat else None, len(flat), errors)


def judge_pairwise(
    rows: Sequence[dict],
    baseline_rows: Sequence[dict],
    client: JudgeClient,
    cache_file: str | os.PathLike | None = None,
    system_prompt: str = PAIRWISE_SYSTEM_PROMPT,
) -> MTBenchResult:
    """Pairwise grading of `rows` against `baseline_rows` (matched by `question_id`): per turn, both orders; the win
    rate of `rows` with ties as halves, per turn and overall."""
    baseline = {row["question_id"]: row for row in baseline_rows}
    missing = [row["question_id"] for row in rows if row["question_id"] not in baseline]
    if missing:
        raise ValueError(f"The baseline has no answers for questions {missing[:5]}: answer the same question set.")
    cache = _cached(cache_file)
    outcomes: dict[int, list[float]] = {}
    errors = 0
    for row in rows:
        other = baseline[row["question_id"]]
        for turn in range(min(len(row["answers"]), len(other["answers"]))):
            a = _transcript(row["turns"], row["answers"], turn, "Assistant A")
            b = _transcript(other["turns"], other["answers"], turn, "Assistant B")
            swapped_a = _transcript(other["turns"], other["answers"], turn, "Assistant A")
            swapped_b = _transcript(row["turns"], row["answers"], turn, "Assistant B")
            verdicts = []
            for first, second in ((a, b), (swapped_a, swapped_b)):
                content = f"{first}\n\n{second}"
                record = _judgment(
                    cache, cache_file, client, system_prompt, row, turn, content, "verdict", parse_pairwise_verdict
                )
                verdicts.append(record.get("verdict"))
            _, score = combine_orders(*verdicts)
            if score is None:
                errors += 1
                continue
            outcomes.setdefault(turn + 1, []).append(score)
    per_turn = {turn: sum(values) / len(values) for turn, values in sorted(outcomes.items())}
    flat = [v for values in outcomes.values() for v in values]
    return MTBenchResult("pairwise", per_turn, sum(flat) / len(flat) if flat else None, len(flat), errors)
