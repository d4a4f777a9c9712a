"""The `rank` stage: K candidates per prompt, scored, written as a ranked dataset in this package's schema.

Candidates are given (a `completions` column) or generated from one or more policies
([`trl_rankalign.sampling.answers.generate_answers`], i.e. [`trl_rankalign.sampling.generation.sample_and_score`]:
batched, resumable). They are scored by exactly one of:

- a reward: a sequence-classification checkpoint, a loaded one wrapped with [`trl_rankalign.sampling.scorers.as_scorer`], or a
  Python callable `(prompts, completions) -> rewards`;
- an LLM judge ([`trl_rankalign.sampling.llm_judge.JudgeClient`]) in one of two modes:
  - `"rating"` (UltraFeedback style): one request per candidate asking for a JSON object of 1-5 ratings, one per
    aspect (default: helpfulness, honesty, instruction_following, truthfulness, each with a short rubric); the
    candidate's score is the mean of its aspect ratings;
  - `"pairwise"`: each of the K(K-1)/2 pairs is judged in both orders (2 requests per pair, cancelling position
    bias) with evaluation's pairwise prompt; every parsed order is one comparison (win / loss / tie) and the scores
    are the log-strengths of a Bradley-Terry fit ([`bradley_terry`]).

Garbage is never a result: an unparseable verdict (a reply cut at its token limit included) is counted as a parse
error. In rating mode the candidate it
belongs to gets no score and is dropped; in pairwise mode that comparison is left out, and a candidate left with no
parsed comparison is dropped. A row left with fewer than 2 scored candidates is dropped. Every drop is counted in
`summary.json` and logged. Empty completions are dropped (and counted) before scoring, as the schema rejects them.

Outputs under `output_dir`:

- `verdicts.jsonl`: one record per finished prompt, appended by the worker that judged it as soon as it finishes (so
  a failure elsewhere cannot discard what was paid for): `index`, `setup` (what scores depend on: the scorer's
  identity, i.e. a reward model's fingerprint or a callable's module, name and source code, or the judge's model,
  request settings, prompts, aspects and parser), `key` (hash of the setup, prompt and candidates), `prompt`,
  `completions` (all K candidates), `judgments` (the judge's raw replies, key masked, and parsed verdicts),
  `parse_errors`, `failed` (requests the judge refused, e.g. HTTP 400 for a prompt too long: the run goes on and names
  them; or never asked because the endpoint failed and the run stopped), `scores` (K floats, `null` for a dropped
  candidate). A rerun skips the indices already there with the same `key`, asking the judge again only for the
  verdicts it could not parse or was refused, so a run stopped by an unreachable endpoint loses nothing paid for. Records scored by another reward are rescored; records judged with
  another judge setup stop the run (they were paid for: use another `output_dir`, or delete `verdicts.jsonl`);
- `candidates/<p>-<policy name>.jsonl`: the generated candidates of policy `p` (resumable generation cache, keyed
  on the policy's fingerprint, K and the decoding settings: changed settings regenerate them, unless the judge has
  already been paid for verdicts on the old ones, which stops the run with a message naming the setting);
- `ranked/` (`Dataset.save_to_disk`) and `ranked.jsonl`: rows `{"prompt", "completions", "scores"}`;
- `summary.json`: the counts: prompts, candidates, requests (of all finished prompts; `requests_this_run` of those
  finished by this run), parse errors, `refused_prompts` (indices; `trl-rankalign rank` then exits with 1), empty /
  dropped candidates, dropped rows, rows kept.
"""

import gc
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset
from tqdm.auto import tqdm

from ..data.schema import validate_ranked_example
from .answers import check_checkpoint, generate_answers, model_name_from_path
from .fingerprint import diff_settings, short_hash
from .generation import StaleCacheError, scorer_identity
from .http import EndpointError, is_refusal
from .jsonl import append_jsonl, output_folder, repair_jsonl
from .llm_judge import (
    DEFAULT_JUDGE_SYSTEM_PROMPT,
    DEFAULT_PAIRWISE_TEMPLATE,
    JudgeClient,
    JudgeRequestError,
    VerdictParseError,
    parse_aspect_ratings,
    parse_pairwise_verdict,
)
from .prompts import answer_text, load_prompts, prompt_text
from .scorers import as_scorer


__all__ = [
    "DEFAULT_ASPECTS",
    "DEFAULT_RATING_SYSTEM_PROMPT",
    "DEFAULT_RATING_TEMPLATE",
    "bradley_terry",
    "rank_candidates",
    "rating_messages",
    "split_num_samples",
]

logger = logging.getLogger(__name__)

# UltraFeedback's four aspects (Cui et al. 2023), each with a condensed 1-5 rubric.
DEFAULT_ASPECTS = {
    "helpfulness": "Is the response correct, informative and useful for the task? 1 = wrong or useless; "
    "3 = correct and somewhat useful; 5 = accurate, in-depth and highly useful.",
    "honesty": "Is the response confident where it is right and does it express uncertainty (or decline) where "
    "it is unsure? 1 = confidently wrong; 3 = unsure or vague where it should not be; 5 = correct and "
    "appropriately confident.",
    "instruction_following": "Does the response do what the instruction asks, respecting its intent, format and "
    "constraints? 1 = ignores it; 3 = partly follows it; 5 = fully follows it.",
    "truthfulness": "Is the response free of hallucinations: invented facts, contradictions with the instruction "
    "or with itself? 1 = mostly hallucinated; 3 = partly hallucinated; 5 = no hallucination.",
}

DEFAULT_RATING_SYSTEM_PROMPT = (
    "You are a careful and impartial evaluator of AI assistants. Rate the response to the user's instruction on each "
    "aspect below with an integer from 1 (worst) to 5 (best), following its rubric. The response's length and style "
    "must not influence you beyond what a rubric asks."
)

DEFAULT_RATING_TEMPLATE = (
    "[Instruction]\n{question}\n\n"
    "[The Start of the Response]\n{answer}\n[The End of the Response]\n\n"
    "[Aspects]\n{rubric}\n\n"
    "Explain your ratings briefly, then end your reply with one JSON object holding an integer rating from 1 to 5 "
    "for exactly these keys: {keys}. For example: {example}"
)

_PAIRWISE_SCORE = {"A": 1.0, "tie": 0.5, "B": 0.0}  # score of assistant A
VERDICT_PARSERS = {"rating": "aspect-ratings-v1", "pairwise": "pairwise-verdict-v1"}  # bump when a parser changes


# ------------------------------------------------------------------------------------------------- Bradley-Terry
def bradley_terry(
    num_items: int,
    comparisons: Sequence[tuple[int, int, float]],
    prior: float = 0.1,
    max_iter: int = 10_000,
    tol: float = 1e-10,
) -> list[float]:
    """
    Bradley-Terry log-strengths from pairwise comparisons, by the MM algorithm of Hunter (2004), eq. (3).

    Model: P(i beats j) = p_i / (p_i + p_j). With W_i the wins of i (a tie is half a win for each side) and n_ij the
    number of comparisons of i and j, each step is `p_i <- W_i / sum_{j != i} n_ij / (p_i + p_j)`, then the p are
    rescaled to geometric mean 1; it stops when no log p_i moves by more than `tol`. The fixed point is the maximum
    likelihood estimate, where `W_i = sum_j n_ij p_i / (p_i + p_j)` for every i.

    Args:
        num_items: N, the items are `0 .. N-1`.
        comparisons: `(i, j, s)` triples, `s` the score of `i` against `j`: 1 (i won), 0.5 (tie) or 0 (j won).
        prior: a symmetric prior: `prior` virtual tied comparisons between every pair of items (half a win each), so
            an undefeated item keeps a finite strength and items never compared sit at the mean. With `prior=0`
            every item must have won something and the comparison graph must be strongly connected.

    Returns:
        N log-strengths `log p_i`, centred (they sum to 0); higher is better.
    """
    if num_items < 0:
        raise ValueError(f"num_items must be >= 0, got {num_items}.")
    if prior < 0:
        raise ValueError(f"prior must be >= 0, got {prior}.")
    wins = np.full(num_items, prior * (num_items - 1) / 2)  # (N,)
    games = np.full((num_items, num_items), float(prior))  # (N, N), n_ij
    np.fill_diagonal(games, 0.0)
    for i, j, s in comparisons:
        if not (0 <= i < num_items and 0 <= j < num_items) or i == j:
            raise ValueError(f"Comparison ({i}, {j}) needs two different items in [0, {num_items}).")
        if s not in (0, 0.5, 1):
            raise ValueError(f"Comparison ({i}, {j}) has score {s!r}; expected 1 (win), 0.5 (tie) or 0 (loss).")
        wins[i] += s
        wins[j] += 1 - s
        games[i, j] += 1
        games[j, i] += 1
    if num_items <= 1:
        return [0.0] * num_items
    if np.any(wins <= 0):
        raise ValueError(f"Items {np.flatnonzero(wins <= 0).tolist()} never won: use a prior > 0 to keep them finite.")
    log_p = np.zeros(num_items)
    for _ in range(max_iter):
        p = np.exp(log_p)
        denominator = (games / (p[:, None] + p[None, :])).sum(axis=1)  # (N,) sum_j n_ij / (p_i + p_j)
        new = np.log(wins) - np.log(denominator)
        new -= new.mean()
        converged = np.max(np.abs(new - log_p)) < tol
        log_p = new
        if converged:
            break
    return log_p.tolist()


# ------------------------------------------------------------------------------------------------- judge prompts
def _messages(system_prompt: str | None, user: str) -> list[dict]:
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*system, {"role": "user", "content": user}]


def _aspects(aspects: Mapping[str, str] | Sequence[str]) -> dict[str, str]:
    """`{name: rubric}` from a mapping, or from names (default rubrics; an unknown name is rated without one)."""
    aspects = dict(aspects) if isinstance(aspects, Mapping) else {a: DEFAULT_ASPECTS.get(a, "") for a in aspects}
    if not aspects:
        raise ValueError("Rating mode needs at least one aspect.")
    return aspects


def rating_messages(
    prompt: Any,
    completion: Any,
    aspects: Mapping[str, str] | Sequence[str] = DEFAULT_ASPECTS,
    template: str = DEFAULT_RATING_TEMPLATE,
    system_prompt: str | None = DEFAULT_RATING_SYSTEM_PROMPT,
) -> list[dict]:
    """The chat messages asking for one candidate's per-aspect ratings.

    `template` is formatted (`str.format`) with `question`, `answer`, `rubric` (one `- name: rubric` line per
    aspect), `keys` (the aspect names, quoted) and `example` (a JSON object with every aspect at 3).
    """
    aspects = _aspects(aspects)
    rubric = "\n".join(f"- {name}: {text}".rstrip(": ") for name, text in aspects.items())
    user = template.format(
        question=prompt_text(prompt),
        answer=answer_text(completion),
        rubric=rubric,
        keys=", ".join(json.dumps(name) for name in aspects),
        example=json.dumps(dict.fromkeys(aspects, 3)),
    )
    return _messages(system_prompt, user)


def _pairwise_messages(prompt, a, b, template: str, system_prompt: str | None) -> list[dict]:
    user = template.format(question=prompt_text(prompt), answer_a=answer_text(a), answer_b=answer_text(b))
    return _messages(system_prompt, user)


# ------------------------------------------------------------------------------------------------- scoring one row
class _Stop:
    """Shared by the rows judged at once: set by the first failure of the endpoint itself (unreachable, 401, ...), after
    which no row asks anything more (what each row was paid for is still saved)."""

    def __init__(self):
        self.error: Exception | None = None
        self.lock = threading.Lock()

    def set(self, error: Exception) -> None:
        with self.lock:
            self.error = self.error or error


def _ask(client: JudgeClient, messages: list[dict], stop: _Stop) -> tuple[str | None, str | None]:
    """`(reply, None)`, or `(None, why)` when the endpoint refused this request (HTTP 400/413/422: recorded, the run
    goes on), failed altogether (recorded, and `stop` is set) or the run has stopped."""
    if stop.error is not None:
        return None, "not asked: the run stopped"
    try:
        return client.chat(messages), None
    except EndpointError as error:
        if not is_refusal(error):
            stop.set(error)
        return None, str(error)[:500]


def _judge_rating(
    client: JudgeClient, prompt, completions, aspects, template, system_prompt, previous=None, stop=None
) -> dict:
    """One request per candidate; with `previous` judgments, only those whose ratings could not be parsed (or were
    refused) are asked again. `asked` counts this call's requests."""
    stop = stop or _Stop()
    done = {j["candidate"]: j for j in (previous or []) if j.get("ratings") is not None}
    judgments, scores, asked = [], [], 0
    for k, completion in enumerate(completions):
        if k in done:
            judgment = done[k]
        else:
            reply, failure = _ask(client, rating_messages(prompt, completion, aspects, template, system_prompt), stop)
            asked += reply is not None
            judgment = {"candidate": k, "reply": reply, "ratings": None}
            if failure is not None:
                judgment["error"] = failure
            else:
                try:
                    judgment["ratings"] = parse_aspect_ratings(reply, list(aspects))
                except VerdictParseError:
                    pass
        judgments.append(judgment)
        ratings = judgment["ratings"]
        scores.append(None if ratings is None else float(np.mean(list(ratings.values()))))
    return {"judgments": judgments, "scores": scores, "asked": asked}


def _judge_pairwise(
    client: JudgeClient, prompt, completions, prior, template, system_prompt, previous=None, stop=None
) -> dict:
    """Both orders of every pair; with `previous` judgments, only the unparsed (or refused) orders are asked again."""
    stop = stop or _Stop()
    done = {(j["a"], j["b"]): j for j in (previous or []) if j.get("verdict") is not None}
    judgments, asked = [], 0
    for i in range(len(completions)):
        for j in range(i + 1, len(completions)):
            for a, b in ((i, j), (j, i)):  # both orders
                if (a, b) in done:
                    judgments.append(done[(a, b)])
                    continue
                messages = _pairwise_messages(prompt, completions[a], completions[b], template, system_prompt)
                reply, failure = _ask(client, messages, stop)
                asked += reply is not None
                judgment = {"a": a, "b": b, "reply": reply, "verdict": None}
                if failure is not None:
                    judgment["error"] = failure
                else:
                    try:
                        judgment["verdict"] = parse_pairwise_verdict(reply)
                    except VerdictParseError:
                        pass
                judgments.append(judgment)
    parsed = [(j["a"], j["b"], _PAIRWISE_SCORE[j["verdict"]]) for j in judgments if j["verdict"] is not None]
    compared = sorted({k for a, b, _ in parsed for k in (a, b)})  # a candidate with no parsed comparison is dropped
    position = {k: n for n, k in enumerate(compared)}
    strengths = bradley_terry(len(compared), [(position[a], position[b], s) for a, b, s in parsed], prior=prior)
    scores = [strengths[position[k]] if k in position else None for k in range(len(completions))]
    return {"judgments": judgments, "scores": scores, "asked": asked}


# ------------------------------------------------------------------------------------------------- inputs
def split_num_samples(num_samples: int, num_policies: int) -> list[int]:
    """K per prompt in total, split as evenly as possible, the first policies taking the remainder: (5, 2) -> [3, 2]."""
    if num_policies < 1 or num_samples < max(2, num_policies):
        raise ValueError(
            f"num_samples={num_samples} must be >= 2 and >= the number of policies ({num_policies}): it is K, the "
            "number of candidates per prompt in total, split between the policies."
        )
    return [num_samples // num_policies + (p < num_samples % num_policies) for p in range(num_policies)]


def _generate(prompts, policies, num_samples, output_dir: Path, generation_kwargs, on_stale) -> list[list]:
    """Candidates per prompt: policy 0's samples first, then policy 1's, ... (one resumable JSONL per policy)."""
    counts = split_num_samples(num_samples, len(policies))
    candidates = [[] for _ in prompts]
    (output_dir / "candidates").mkdir(parents=True, exist_ok=True)
    for p, (policy, count) in enumerate(zip(policies, counts)):
        model, tokenizer = policy if isinstance(policy, tuple) else (policy, None)
        name = model_name_from_path(model) if isinstance(model, str | os.PathLike) else type(model).__name__
        kwargs = {"do_sample": True, **generation_kwargs, "seed": generation_kwargs.get("seed", 0) + p}
        rows = generate_answers(
            model,
            prompts,
            output_dir / "candidates" / f"{p}-{name}.jsonl",
            tokenizer,
            num_samples=count,
            on_stale=on_stale,
            **kwargs,
        )
        for row in rows:
            candidates[row["index"]].extend(row["completions"])
        del model, rows
        gc.collect()
    return candidates


def _is_empty(completion: Any) -> bool:
    if isinstance(completion, str):
        return not completion.strip()
    return isinstance(completion, list) and (not completion or not answer_text(completion))


def _reward_scorer(reward: Any):
    """[`as_scorer`] of `reward`, a path naming what is wrong when it is not a loadable reward model folder
    (transformers reports a missing folder as a malformed hub id)."""
    if not isinstance(reward, str | os.PathLike):
        return as_scorer(reward)
    check_checkpoint(reward, what="Reward model")
    try:
        return as_scorer(reward)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"Cannot load reward model {str(reward)!r}: no such local folder, and not a model id that can be loaded "
            f"here ({str(error).splitlines()[0]})."
        ) from None


def _key(setup: Any, prompt: Any, completions: list) -> str:
    return short_hash([setup, prompt, completions])


# ------------------------------------------------------------------------------------------------- the stage
def rank_candidates(
    prompts: Any,
    candidates: Sequence[Sequence[Any]] | None = None,
    *,
    output_dir: str | os.PathLike,
    policies: Sequence[str | tuple] | None = None,
    num_samples: int = 4,
    reward: str | Callable[..., Any] | None = None,
    judge: JudgeClient | None = None,
    judge_mode: str = "rating",
    aspects: Mapping[str, str] | Sequence[str] = DEFAULT_ASPECTS,
    template: str | None = None,
    system_prompt: str | None = None,
    bt_prior: float = 0.1,
    batch_size: int = 8,
    max_workers: int = 4,
    prompt_column: str = "prompt",
    completions_column: str = "completions",
    limit: int | None = None,
    generation_kwargs: dict | None = None,
) -> Dataset:
    """
    Score K candidates per prompt and save a ranked dataset (`prompt`, `completions`, `scores`) under `output_dir`.

    Args:
        prompts: anything [`trl_rankalign.evaluation.load_prompts`] reads: a `.jsonl` / `.json` file, a
            `save_to_disk` folder, a `datasets.Dataset`, or a list of rows or of bare prompts (strings or chat
            message lists). Rows may hold the candidates in `completions_column`.
        candidates: K_i candidates per prompt (a list of N lists); default: the rows' `completions_column`, or, with
            `policies`, generated.
        output_dir: where the verdicts, the generated candidates, the ranked dataset and the summary go (see the
            module docstring); a rerun with the same folder continues.
        policies: checkpoints (paths / hub ids) or `(model, tokenizer)` pairs to sample candidates from.
        num_samples: K, the candidates per prompt in total, split between the policies ([`split_num_samples`]).
        reward: a reward model path, a callable `(prompts, completions) -> rewards`, or a scorer from
            [`trl_rankalign.sampling.scorers.as_scorer`] (e.g. for a loaded reward model). Exclusive with `judge`.
        judge: an LLM judge client; `judge_mode` is `"rating"` or `"pairwise"` (module docstring).
        aspects: rating mode: `{name: rubric}`, or names (default rubrics for the known ones).
        template, system_prompt: the judge's user template and system prompt; default
            [`DEFAULT_RATING_TEMPLATE`] / evaluation's `DEFAULT_PAIRWISE_TEMPLATE` and their system prompts.
        bt_prior: pairwise mode: the prior of [`bradley_terry`].
        batch_size: prompts per scorer call (reward) and per `generate` call.
        max_workers: prompts judged concurrently (the client's rate limit is shared by all).
        limit: use only the first `limit` prompts.
        generation_kwargs: for [`trl_rankalign.sampling.answers.generate_answers`] (`max_new_tokens`, `temperature`,
            `top_k`, `top_p`, `seed`, `do_sample` (default True), `device`, and the generation backend:
            `backend` with its options); policy `p` is seeded with `seed + p`.

    Returns:
        `datasets.Dataset` of the kept rows, each candidate list in input order with its scores (higher is better).

    Raises:
        `ValueError` for bad inputs, when every row is dropped, or when a changed setting would discard verdicts
        the judge was paid for (naming the setting); [`JudgeRequestError`] when the endpoint keeps failing (after the
        finished prompts are saved).
    """
    if (reward is None) == (judge is None):
        raise ValueError("Pass exactly one of `reward` (a reward model or callable) and `judge` (an LLM judge).")
    if judge is not None and judge_mode not in ("rating", "pairwise"):
        raise ValueError(f"judge_mode must be 'rating' or 'pairwise', got {judge_mode!r}.")
    if candidates is not None and policies:
        raise ValueError("Pass either `candidates` or `policies` (to generate them), not both.")
    output_dir = output_folder(output_dir)
    rows = load_prompts(prompts, prompt_column, reference_column=None, limit=limit)
    texts = [row["prompt"] for row in rows]
    if len({isinstance(p, str) for p in texts}) > 1:  # before generating or scoring anything
        raise ValueError("The prompts mix strings and chat-message lists: a ranked dataset holds one kind.")

    # The scoring setup: what a finished record must match to be reused.
    if judge is None:
        scorer = _reward_scorer(reward)
        method, setup = "reward", {"method": "reward", "scorer": scorer_identity(scorer)}
    else:
        method = judge_mode
        if judge_mode == "rating":
            aspects = _aspects(aspects)
            template = template or DEFAULT_RATING_TEMPLATE
            system_prompt = system_prompt if system_prompt is not None else DEFAULT_RATING_SYSTEM_PROMPT
        else:
            template = template or DEFAULT_PAIRWISE_TEMPLATE
            system_prompt = system_prompt if system_prompt is not None else DEFAULT_JUDGE_SYSTEM_PROMPT
        setup = {
            "method": method,
            "judge": judge.settings(),
            "system_prompt": short_hash(system_prompt or ""),
            "template": short_hash(template),
            "aspects": aspects if judge_mode == "rating" else None,
            "bt_prior": bt_prior if judge_mode == "pairwise" else None,
            "parser": VERDICT_PARSERS[judge_mode],
        }
    setup = json.loads(json.dumps(setup))  # as read back from the file

    verdicts_file = output_dir / "verdicts.jsonl"
    records = [r for r in repair_jsonl(verdicts_file) if isinstance(r.get("index"), int)]  # damaged lines redone
    paid = [r for r in records if r.get("judgments")]  # the judge was asked (and paid) for these
    other = next((r for r in paid if r.get("setup") != setup), None)
    if other is not None:
        raise ValueError(
            f"{verdicts_file} holds {len(paid)} prompts judged with another setup "
            f"({'; '.join(diff_settings(other.get('setup'), setup))}). They were paid for: rerun with that setup to "
            "keep using them, or use another --output_dir (or delete verdicts.jsonl) to judge again."
        )

    if policies:
        on_stale = "error" if paid else "regenerate"  # regenerating would make the paid verdicts useless
        try:
            candidates = _generate(
                texts, list(policies), num_samples, output_dir, dict(generation_kwargs or {}), on_stale
            )
        except StaleCacheError as error:
            raise ValueError(
                f"{error} Regenerating the candidates would discard the {len(paid)} prompts the judge already scored "
                f"in {verdicts_file}: rerun with the settings they were generated with, or use another --output_dir "
                "(or delete candidates/ and verdicts.jsonl) to start over."
            ) from None
    elif candidates is None:
        missing = [i for i, row in enumerate(rows) if completions_column not in row]
        if missing:
            raise ValueError(
                f"Row {missing[0]} has no {completions_column!r} column: give candidates, or policies to generate them."
            )
        candidates = [row[completions_column] for row in rows]
    if len(candidates) != len(texts):
        raise ValueError(f"{len(candidates)} candidate lists for {len(texts)} prompts.")
    for i, cands in enumerate(candidates):
        if not isinstance(cands, list | tuple):
            raise ValueError(f"Row {i}: the candidates must be a list of completions, got {type(cands).__name__}.")
    candidates = [list(c) for c in candidates]
    empty = sum(_is_empty(c) for cands in candidates for c in cands)
    candidates = [[c for c in cands if not _is_empty(c)] for cands in candidates]
    for i, (prompt, cands) in enumerate(zip(texts, candidates)):  # fail before paying for a judge, not after
        if len(cands) >= 2:  # rows with fewer are dropped (and counted) at the end
            validate_ranked_example({"prompt": prompt, "completions": cands, "scores": [0.0] * len(cands)}, i)
    keys = [_key(setup, p, c) for p, c in zip(texts, candidates)]

    done = {r["index"]: r for r in records if r["index"] < len(texts)}  # later lines win
    done = {i: r for i, r in done.items() if r.get("key") == keys[i]}
    # garbled, refused or never-asked verdicts: ask again (only those)
    retry = {i: r["judgments"] for i, r in done.items() if r.get("parse_errors") or r.get("failed")}
    done = {i: r for i, r in done.items() if i not in retry}
    todo = [i for i in range(len(texts)) if i not in done]
    if done or retry:
        logger.info(
            "%s: %d prompts already scored, %d to go (%d to re-ask for unparsed or refused verdicts).",
            verdicts_file, len(done), len(todo), len(retry),
        )  # fmt: skip
    lock = threading.Lock()
    requests_this_run = [0]
    stop = _Stop()

    def save(record: dict) -> None:
        with lock:
            append_jsonl(verdicts_file, [record])
            done[record["index"]] = record

    def judge_row(i: int) -> None:
        """Judge prompt `i` and save it at once, from this worker: what was paid for is on disk whatever the other
        prompts do (an exception in the main loop cannot discard it)."""
        if stop.error is not None:
            return  # the endpoint failed: ask nothing more (rows already started finish and are saved)
        if len(candidates[i]) < 2:  # nothing to rank: no request
            result = {"judgments": [], "scores": [None] * len(candidates[i]), "asked": 0}
        elif judge_mode == "rating":
            args = (aspects, template, system_prompt, retry.get(i), stop)
            result = _judge_rating(judge, texts[i], candidates[i], *args)
        else:
            args = (bt_prior, template, system_prompt, retry.get(i), stop)
            result = _judge_pairwise(judge, texts[i], candidates[i], *args)
        with lock:
            requests_this_run[0] += result.pop("asked")
        parsed = "ratings" if judge_mode == "rating" else "verdict"
        failed = sum("error" in j for j in result["judgments"])
        errors = sum(j[parsed] is None and "error" not in j for j in result["judgments"])
        if stop.error is not None and all(j.get("reply") is None for j in result["judgments"]):
            return  # the endpoint failed before anything of this prompt was paid for: nothing to keep
        save({"index": i, "setup": setup, "key": keys[i], "prompt": texts[i], "completions": candidates[i],
              **result, "parse_errors": errors, "failed": failed})  # fmt: skip

    progress = tqdm(total=len(todo), desc=f"Ranking ({method})", disable=not todo)
    if judge is None:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            flat_prompts = [texts[i] for i in batch for _ in candidates[i]]
            flat = scorer(flat_prompts, [c for i in batch for c in candidates[i]])
            for i in batch:
                scores, flat = flat[: len(candidates[i])], flat[len(candidates[i]) :]
                save({"index": i, "setup": setup, "key": keys[i], "prompt": texts[i], "completions": candidates[i],
                      "judgments": [], "parse_errors": 0, "scores": scores})  # fmt: skip
            progress.update(len(batch))
    else:
        with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
            futures = [pool.submit(judge_row, i) for i in todo]
            try:
                for future in as_completed(futures):
                    future.result()
                    progress.update(1)
            except BaseException as error:  # e.g. Ctrl-C: rows in flight ask nothing more, save what they have
                stop.set(error)
                for future in futures:
                    future.cancel()
                raise
    progress.close()
    if stop.error is not None:
        unfinished = [i for i in range(len(texts)) if i not in done or done[i].get("failed")]
        raise JudgeRequestError(
            f"{stop.error} The {len(texts) - len(unfinished)} prompts judged so far are saved in {verdicts_file}; "
            f"rerun to judge the {len(unfinished)} others (nothing paid for is asked again)."
        )
    return _finish([done[i] for i in range(len(texts))], output_dir, method, judge, empty, requests_this_run[0])


def _first_error(records: list[dict]) -> str:
    return next((j["error"] for r in records for j in r["judgments"] if j.get("error")), "")


def _finish(records: list[dict], output_dir: Path, method: str, judge, empty: int, requests_this_run: int) -> Dataset:
    """Keep the scored candidates of each row, drop rows with < 2, write `ranked/`, `ranked.jsonl`, `summary.json`."""
    ranked, dropped_candidates, dropped_rows = [], 0, 0
    for record in records:
        kept = [(c, s) for c, s in zip(record["completions"], record["scores"]) if s is not None]
        dropped_candidates += len(record["completions"]) - len(kept)
        if len(kept) < 2:
            dropped_rows += 1
            continue
        row = {"prompt": record["prompt"], "completions": [c for c, _ in kept], "scores": [s for _, s in kept]}
        validate_ranked_example(row, record["index"])
        ranked.append(row)
    summary = {
        "method": method,
        "judge_model": judge.model if judge is not None else None,
        "prompts": len(records),
        "candidates": sum(len(r["completions"]) for r in records),
        "requests": sum(j.get("reply") is not None for r in records for j in r["judgments"]),
        "requests_this_run": requests_this_run,
        "parse_errors": sum(r["parse_errors"] for r in records),
        "refused_prompts": [r["index"] for r in records if r.get("failed")],
        "empty_candidates": empty,
        "dropped_candidates": dropped_candidates,
        "dropped_rows": dropped_rows,
        "rows": len(ranked),
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if summary["parse_errors"] or dropped_candidates or dropped_rows or empty:
        logger.warning(
            "rank: %d unparseable verdicts; dropped %d empty and %d unscored candidates and %d rows with < 2 scored "
            "candidates (see %s).",
            summary["parse_errors"], empty, dropped_candidates, dropped_rows, output_dir / "summary.json",
        )  # fmt: skip
    if summary["refused_prompts"]:
        logger.warning(
            "rank: the judge refused prompts %s (their candidates are unscored; a rerun asks again only for those): "
            "%s",
            summary["refused_prompts"], _first_error(records),
        )  # fmt: skip
    if not ranked:
        raise ValueError(f"Every row was dropped (< 2 scored candidates each): see {output_dir / 'summary.json'}.")
    with open(output_dir / "ranked.jsonl", "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ranked))
    dataset = Dataset.from_list(ranked)
    dataset.save_to_disk(str(output_dir / "ranked"))
    return dataset
