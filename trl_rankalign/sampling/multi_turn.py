"""Multi-turn answers, as MT-Bench asks for them: each later user turn is answered in the conversation the model
itself made, its own earlier answers included.

[`load_questions`] reads MT-Bench's `question.jsonl` as FastChat ships it (`question_id`, `category`, `turns`: the
user turns, optional `reference`) or any rows of that shape. [`generate_multi_turn_answers`] answers turn 1 of every
question, then turn 2 in the conversation `[user 1, own answer 1, user 2]`, and so on, through the one generation
layer ([`trl_rankalign.sampling.generation.sample_completions`], any backend). It is resumable per question and turn:
each answer is one JSONL line `{"question_id", "turn", "answer", "generation"}`, appended as soon as that question's
turn is answered; `generation` records everything the answer depends on (backend, model and tokenizer fingerprints,
decoding settings, the question's text) and nothing that does not (transport options), and a rerun reuses only
answers whose settings match (a turn whose earlier answer was redone is redone too).
Categories get MT-Bench's own temperatures ([`MT_BENCH_TEMPERATURES`], FastChat's `temperature_config`) unless
`temperature_by_category=None`.
"""

import dataclasses
import hashlib
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .fingerprint import model_fingerprint, short_hash, tokenizer_fingerprint
from .generation import Decoding, make_backend, sample_completions
from .jsonl import append_jsonl, output_folder, repair_jsonl
from .prompts import check_limit, load_rows


__all__ = [
    "MT_BENCH_TEMPERATURES",
    "generate_multi_turn_answers",
    "load_multi_turn_answers",
    "load_questions",
    "question_seed",
]

logger = logging.getLogger(__name__)

# FastChat's MT-Bench sampling temperature per category (llm_judge/common.py `temperature_config`)
MT_BENCH_TEMPERATURES = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
    "arena-hard-200": 0.0,
}


def _fail(index: int, field: str, message: str):
    raise ValueError(f"question row {index}, field '{field}': {message}")


def load_questions(source: Any, limit: int | None = None) -> list[dict]:
    """Multi-turn questions `{"question_id", "category", "turns", "reference"?}`, validated: `turns` is a non-empty
    list of non-empty user turns (strings, or `{"role": "user", "content"}` messages); ids are unique."""
    check_limit(limit)
    rows = load_rows(source)[:limit] if limit is not None else load_rows(source)
    if not rows:
        raise ValueError(f"The question set {source!r} is empty.")
    questions, seen = [], set()
    for index, row in enumerate(rows):
        if row.get("question_id") is None:
            _fail(index, "question_id", "missing")
        if row["question_id"] in seen:
            _fail(index, "question_id", f"duplicate id {row['question_id']!r}")
        seen.add(row["question_id"])
        turns = row.get("turns")
        if not isinstance(turns, list) or not turns:
            _fail(index, "turns", "expected a non-empty list of user turns")
        texts = []
        for t, turn in enumerate(turns):
            if isinstance(turn, Mapping):
                if turn.get("role") != "user":
                    _fail(index, f"turns[{t}].role", f"expected a user turn, got {turn.get('role')!r}")
                turn = turn.get("content")
            if not isinstance(turn, str) or not turn.strip():
                _fail(index, f"turns[{t}]", "expected a non-empty user turn")
            texts.append(turn)
        question = {"question_id": row["question_id"], "category": row.get("category"), "turns": texts}
        if row.get("reference") is not None:
            question["reference"] = row["reference"]
        questions.append(question)
    return questions


def _conversation(question: dict, answers: Sequence[str], turn: int) -> list[dict]:
    """The chat prompt of turn `turn` (0-based): every earlier user turn with the model's own answer, then this one."""
    messages = []
    for t in range(turn):
        messages += [{"role": "user", "content": question["turns"][t]}, {"role": "assistant", "content": answers[t]}]
    return messages + [{"role": "user", "content": question["turns"][turn]}]


def question_seed(seed: int, question_id: Any, turn: int) -> int:
    """The seed of one question's turn in a call seeded `seed` (31 bits): the same whichever other questions are asked
    with it, so a resumed run draws what the uninterrupted one did."""
    digest = hashlib.sha256(json.dumps([seed, question_id, turn], default=str).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def generate_multi_turn_answers(
    model: Any,
    tokenizer: Any,
    questions: Sequence[dict],
    output_file: str | os.PathLike,
    backend: Any = "transformers",
    temperature_by_category: Mapping[str, float] | None = MT_BENCH_TEMPERATURES,
    num_turns: int | None = None,
    model_identity: str | None = None,
    **decoding,
) -> list[dict]:
    """Answer every turn of every question (see the module docstring) and return one row per question
    `{"question_id", "category", "turns", "answers"}`, in question order.

    Each answer is appended to `output_file` as soon as it is made (one question's turn per generation call, up to the
    backend's `concurrency` in flight), so a kill loses only the questions in flight. An answer is reused when its
    `generation` matches: backend, model and tokenizer identity, decoding settings, temperature, turn, and a hash of
    the question's user turns up to this one (a question edited under the same id is answered again). Transport
    options (concurrency, timeout, retries, rate limit, batch size) are left out: they change how fast answers come,
    not what they are.

    Args:
        model, tokenizer: the policy (the tokenizer's chat template renders each conversation).
        questions: from [`load_questions`].
        output_file: the resumable answers file.
        backend, **decoding: see [`sample_completions`] (`temperature`, `top_p`, `max_new_tokens`, `seed`, backend
            options). `temperature` is the default for categories missing from `temperature_by_category`. Turn `t`
            of question `q` is seeded with [`question_seed`]`(seed, q, t)`.
        num_turns: answer only the first `num_turns` turns (default: all).
        model_identity: what identifies the model in the cache (default: its fingerprint).
    """
    output_folder(Path(output_file).parent)
    decoding = dict(decoding)
    default_temperature = decoding.pop("temperature", 0.7)
    names = {f.name for f in dataclasses.fields(Decoding)} | {"do_sample"}
    sampling = {k: v for k, v in decoding.items() if k in names}  # what answers depend on
    engine = make_backend(backend, **{k: v for k, v in decoding.items() if k not in names})  # transport: not keyed
    identity = {
        "backend": getattr(engine, "name", type(engine).__name__),
        "model": model_identity or (model_fingerprint(model) if model is not None else engine.identity(model)),
        "engine": engine.identity(None) if model is None and model_identity else None,  # a server's route and format
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    seed = sampling.pop("seed", 0)
    depth = max(len(q["turns"]) for q in questions) if num_turns is None else num_turns

    def temperature_of(question: dict) -> float:
        if temperature_by_category is None:
            return default_temperature
        return temperature_by_category.get(question.get("category"), default_temperature)

    def settings(question: dict, turn: int) -> dict:
        key = {**identity, **sampling, "seed": seed, "temperature": temperature_of(question), "turn": turn}
        key["question"] = short_hash(question["turns"][: turn + 1])
        return json.loads(json.dumps(key, default=str))  # as read back from the file

    answers: dict[Any, list[str]] = {q["question_id"]: [] for q in questions}
    cached = {}
    for row in repair_jsonl(output_file) if Path(output_file).exists() else []:
        cached[(row.get("question_id"), row.get("turn"))] = row
    lock = threading.Lock()

    def answer(question: dict, turn: int) -> None:
        """Answer one question's turn and append it at once (whole line, under the lock)."""
        prompt = _conversation(question, answers[question["question_id"]], turn)
        temperature = temperature_of(question)
        # MT-Bench's table answers math, coding, reasoning and extraction at temperature 0 (greedy): the table wins
        # over a `do_sample=True` meant for the other categories
        options = {k: v for k, v in sampling.items() if not (k == "do_sample" and temperature == 0)}
        ((text,),) = sample_completions(
            model,
            tokenizer,
            [prompt],
            1,
            backend=engine,
            progress=False,
            temperature=temperature,
            seed=question_seed(seed, question["question_id"], turn),
            **options,
        )
        row = {
            "question_id": question["question_id"],
            "turn": turn,
            "answer": text.strip(),
            "generation": settings(question, turn),
        }
        with lock:
            append_jsonl(output_file, [row])
            cached[(question["question_id"], turn)] = {**row, "reused": True}

    workers = max(1, int(getattr(engine, "concurrency", 1)))
    for turn in range(depth):
        todo = []
        for question in questions:
            if turn >= len(question["turns"]) or len(answers[question["question_id"]]) < turn:
                continue
            row = cached.get((question["question_id"], turn))
            upstream_ok = all(cached.get((question["question_id"], t), {}).get("reused") for t in range(turn))
            if row is not None and row.get("generation") == settings(question, turn) and upstream_ok:
                row["reused"] = True
                answers[question["question_id"]].append(row["answer"])
            else:
                todo.append(question)
        if todo and any(cached.get((q["question_id"], turn)) for q in todo):
            logger.warning(
                "Turn %d: regenerating %d answers made with other settings or contexts.", turn + 1, len(todo)
            )
        progress = tqdm(total=len(todo), desc=f"Turn {turn + 1}", disable=not todo)
        if workers == 1:  # in this thread: in-process backends (transformers, vLLM) stay on the caller's thread
            for question in todo:
                answer(question, turn)
                progress.update(1)
        else:
            with ThreadPoolExecutor(max_workers=min(workers, len(todo) or 1)) as pool:
                futures = [pool.submit(answer, question, turn) for question in todo]
                try:
                    for future in as_completed(futures):
                        future.result()
                        progress.update(1)
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
        progress.close()
        for question in todo:
            answers[question["question_id"]].append(cached[(question["question_id"], turn)]["answer"])
    return [
        {
            "question_id": q["question_id"],
            "category": q.get("category"),
            "turns": q["turns"][: len(answers[q["question_id"]])],
            "answers": answers[q["question_id"]],
        }
        for q in questions
    ]


def load_multi_turn_answers(output_file: str | os.PathLike, questions: Sequence[dict]) -> list[dict]:
    """The latest answer of every turn in a multi-turn answers file, per question (for exports and judging)."""
    latest = {}
    for row in repair_jsonl(output_file):
        latest[(row["question_id"], row["turn"])] = row["answer"]
    rows = []
    for question in questions:
        answers = []
        while (question["question_id"], len(answers)) in latest:
            answers.append(latest[(question["question_id"], len(answers))])
        rows.append({**question, "answers": answers})
    return rows
