"""Pairwise win rate of a model against a baseline, judged by a reward model or an LLM, with a bootstrap CI.

Both sides are answers files (or rows) from [`trl_rankalign.sampling.answers`], aligned by prompt index; the first
answer of each prompt is compared. Per prompt the outcome is a win (1), a tie (0.5) or a loss (0) for the model, and
the win rate is `(wins + 0.5 * ties) / n` over the prompts that were judged. Prompts whose verdict could not be
parsed are reported as `errors` and left out of `n`: garbage is never a win.

LLM judge rule (position bias): each pair is judged twice, the model as assistant A then as assistant B. Each order
gives 1 / 0.5 / 0 to the model and the outcome is their mean: a win needs a win in one order and a win or a tie in
the other; a loss likewise; a win in one order and a loss in the other (the judge followed the position), or two
ties, is a tie. An error in either order (an unparseable reply, one cut at its token limit, or a request the endpoint
refused, e.g. HTTP 400 for one prompt too long) makes the prompt an error; the others go on.

The judgments cache (JSONL, one record per prompt, appended as judgments arrive) records the judge setup (model,
request settings, system prompt, template, parser) and, per prompt, a key of that setup and the question and both
answers. A rerun reuses a record only when its key matches, and asks again for the orders whose verdict could not be
parsed (a garbled reply is never final). A cache made with another judge setup is not overwritten: the run stops and
names the changed setting (pass another cache file to keep both).
"""

import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..sampling.answers import answer_text, load_answers, prompt_text
from ..sampling.fingerprint import diff_settings, short_hash
from ..sampling.http import EndpointError, is_refusal
from ..sampling.jsonl import append_jsonl, repair_jsonl
from ..sampling.llm_judge import (
    DEFAULT_JUDGE_SYSTEM_PROMPT,
    DEFAULT_PAIRWISE_TEMPLATE,
    JudgeClient,
    VerdictParseError,
    parse_pairwise_verdict,
)
from ..sampling.scorers import as_scorer


__all__ = [
    "DEFAULT_JUDGE_SYSTEM_PROMPT",
    "DEFAULT_PAIRWISE_TEMPLATE",
    "WinRateResult",
    "bootstrap_win_rate",
    "combine_orders",
    "llm_judge_win_rate",
    "reward_win_rate",
]

logger = logging.getLogger(__name__)

_OUTCOME = {1.0: "win", 0.5: "tie", 0.0: "loss"}
JUDGMENT_PARSER = "pairwise-verdict-v1"  # bump when parse_pairwise_verdict changes what it accepts


@dataclass
class WinRateResult:
    """Win / tie / loss counts of `model` against `baseline`, the win rate and its bootstrap confidence interval.

    `n = wins + ties + losses` (errors excluded); `win_rate = (wins + 0.5 * ties) / n`; `ci_low`/`ci_high` the
    percentile interval of `confidence` over `num_resamples` resamples of the judged prompts (seeded); `per_prompt`
    one record per prompt (`index`, `outcome` in win/tie/loss/error, and the judge's scores or verdicts).
    """

    model: str
    baseline: str
    judge: str
    wins: int
    ties: int
    losses: int
    errors: int
    n: int
    win_rate: float
    bootstrap_mean: float
    ci_low: float
    ci_high: float
    confidence: float
    num_resamples: int
    seed: int
    per_prompt: list[dict] = field(default_factory=list, repr=False)

    def to_dict(self, with_per_prompt: bool = False) -> dict:
        data = asdict(self)
        if not with_per_prompt:
            data.pop("per_prompt")
        return data

    def summary(self) -> str:
        return (
            f"{self.model} vs {self.baseline} ({self.judge}): win rate {100 * self.win_rate:.1f}% "
            f"[{100 * self.ci_low:.1f}, {100 * self.ci_high:.1f}] ({100 * self.confidence:.0f}% CI), "
            f"{self.wins} wins / {self.ties} ties / {self.losses} losses / {self.errors} errors over "
            f"{self.n + self.errors} prompts"
        )


def bootstrap_win_rate(
    outcomes: Sequence[float], num_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Bootstrap over prompts: `(mean, low, high)` of the win rate over `num_resamples` resamples (with replacement,
    `numpy.random.default_rng(seed)`), `low`/`high` the `(1 - confidence) / 2` and `(1 + confidence) / 2` percentiles.
    `outcomes` are 1 (win), 0.5 (tie) or 0 (loss)."""
    values = np.asarray(outcomes, dtype=np.float64)
    if values.size == 0:
        raise ValueError("No judged prompts: every verdict was an error, so there is no win rate to bootstrap.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    rng = np.random.default_rng(seed)
    samples = values[rng.integers(0, values.size, size=(num_resamples, values.size))].mean(axis=1)  # (R,)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(samples, [alpha, 1 - alpha])
    return float(samples.mean()), float(low), float(high)


def _result(model, baseline, judge, per_prompt, num_resamples, confidence, seed) -> WinRateResult:
    outcomes = [r["score"] for r in per_prompt if r["outcome"] != "error"]
    mean, low, high = bootstrap_win_rate(outcomes, num_resamples, confidence, seed)
    counts = {k: sum(r["outcome"] == k for r in per_prompt) for k in ("win", "tie", "loss", "error")}
    return WinRateResult(
        model=model,
        baseline=baseline,
        judge=judge,
        wins=counts["win"],
        ties=counts["tie"],
        losses=counts["loss"],
        errors=counts["error"],
        n=len(outcomes),
        win_rate=float(np.mean(outcomes)),
        bootstrap_mean=mean,
        ci_low=low,
        ci_high=high,
        confidence=confidence,
        num_resamples=num_resamples,
        seed=seed,
        per_prompt=per_prompt,
    )


def _aligned(model_answers, baseline_answers) -> tuple[list[dict], list[dict]]:
    model_rows, baseline_rows = load_answers(model_answers), load_answers(baseline_answers)
    baseline_by_index = {row["index"]: row for row in baseline_rows}
    missing = [row["index"] for row in model_rows if row["index"] not in baseline_by_index]
    if missing or len(model_rows) != len(baseline_rows):
        raise ValueError(
            f"Model and baseline answers cover different prompts ({len(model_rows)} vs {len(baseline_rows)} rows; "
            f"model indices missing from the baseline: {missing[:10]}): finish generating both first."
        )
    pairs = [baseline_by_index[row["index"]] for row in model_rows]
    for row, base in zip(model_rows, pairs):
        if row["prompt"] != base["prompt"]:
            raise ValueError(f"Prompt {row['index']} differs between the model and baseline answers files.")
    return model_rows, pairs


def _name(source: Any, default: str) -> str:
    return Path(str(source)).stem if isinstance(source, str | os.PathLike) else default


def reward_win_rate(
    model_answers: str | os.PathLike | Sequence[dict],
    baseline_answers: str | os.PathLike | Sequence[dict],
    reward: str | Callable[..., Any] | Any,
    tokenizer: Any = None,
    tie_tolerance: float = 0.0,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    model_name: str | None = None,
    baseline_name: str | None = None,
    **scorer_kwargs,
) -> WinRateResult:
    """
    Win rate judged by a reward: the model wins a prompt when its answer's reward exceeds the baseline's by more
    than `tie_tolerance`, loses when it is below by more than that, and ties otherwise.

    Args:
        reward: a sequence-classification checkpoint path, a loaded reward model (with `tokenizer`) or a callable
            `(prompts, completions) -> rewards`; anything [`trl_rankalign.sampling.scorers.as_scorer`] accepts (extra
            `scorer_kwargs` such as `batch_size` go to it).
    """
    model_rows, baseline_rows = _aligned(model_answers, baseline_answers)
    scorer = as_scorer(reward, tokenizer=tokenizer, **scorer_kwargs)
    prompts = [row["prompt"] for row in model_rows]
    model_rewards = scorer(prompts, [row["completions"][0] for row in model_rows])
    baseline_rewards = scorer(prompts, [row["completions"][0] for row in baseline_rows])
    per_prompt = []
    for row, r_model, r_base in zip(model_rows, model_rewards, baseline_rewards):
        score = 1.0 if r_model - r_base > tie_tolerance else 0.0 if r_base - r_model > tie_tolerance else 0.5
        per_prompt.append(
            {"index": row["index"], "outcome": _OUTCOME[score], "score": score, "rewards": [r_model, r_base]}
        )
    judge = getattr(scorer, "name", "reward")
    return _result(
        model_name or _name(model_answers, "model"),
        baseline_name or _name(baseline_answers, "baseline"),
        f"reward:{judge}",
        per_prompt,
        num_resamples,
        confidence,
        seed,
    )


def combine_orders(first: str | None, second: str | None) -> tuple[str, float | None]:
    """Outcome for the model from the verdicts of order 1 (model = A) and order 2 (model = B); `None` = error.

    Returns `(outcome, score)`: win (1), tie (0.5), loss (0) or error (None); see the module docstring for the rule.
    """
    if first is None or second is None:
        return "error", None
    score_first = {"A": 1.0, "tie": 0.5, "B": 0.0}[first]
    score_second = {"B": 1.0, "tie": 0.5, "A": 0.0}[second]
    mean = (score_first + score_second) / 2  # 1, 0.75, 0.5, 0.25 or 0
    score = 1.0 if mean > 0.5 else 0.0 if mean < 0.5 else 0.5
    return _OUTCOME[score], score


def judge_pair(client: JudgeClient, system_prompt: str | None, template: str, question, a, b) -> tuple:
    """One pairwise verdict (`"A"`, `"B"`, `"tie"`, or None when the reply cannot be parsed or the endpoint refused
    this one request, e.g. HTTP 400 for a prompt too long) and the raw reply (`None` when refused)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": template.format(question=question, answer_a=a, answer_b=b)})
    try:
        reply = client.chat(messages)
    except EndpointError as error:
        if not is_refusal(error):
            raise  # the endpoint is down or refuses everyone: stop (what is finished is cached)
        logger.warning("The judge refused one request (an error for that prompt, asked again next run): %s", error)
        return None, None
    try:
        return parse_pairwise_verdict(reply), reply
    except VerdictParseError:
        return None, reply


def llm_judge_win_rate(
    model_answers: str | os.PathLike | Sequence[dict],
    baseline_answers: str | os.PathLike | Sequence[dict],
    client: JudgeClient,
    template: str = DEFAULT_PAIRWISE_TEMPLATE,
    system_prompt: str | None = DEFAULT_JUDGE_SYSTEM_PROMPT,
    cache_file: str | os.PathLike | None = None,
    max_workers: int = 4,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    model_name: str | None = None,
    baseline_name: str | None = None,
) -> WinRateResult:
    """
    Win rate judged by an LLM behind an OpenAI-compatible endpoint, both answer orders per prompt.

    Args:
        client: a [`JudgeClient`] (endpoint, model, key env var, timeout, retries, rate limit).
        template: user message with `{question}`, `{answer_a}` and `{answer_b}` (`str.format`: double literal
            braces); the reply must end with `[[A]]`, `[[B]]` or `[[C]]` unless you also change the parser.
        system_prompt: system message (`None` for none).
        cache_file: JSONL of finished judgments (`{"index", "key", "setup", "verdicts", "replies"}`), appended as they
            arrive; a rerun skips a prompt whose record `key` (a hash of the judge setup, the question and both
            answers) still matches and whose two verdicts parsed, and asks again only for unparsed orders, so a run
            stopped by an unreachable endpoint loses nothing already paid for. A cache made with another judge setup
            (model, request settings, system prompt, template) stops the run with a `ValueError` naming the change.
        max_workers: prompts judged concurrently (the client's rate limit is shared).

    Raises:
        [`JudgeRequestError`] when the endpoint keeps failing (after the judgments finished so far are cached).
        Unparseable verdicts do not raise: they are counted in `errors`.
    """
    model_rows, baseline_rows = _aligned(model_answers, baseline_answers)
    setup = {
        "judge": client.settings(),
        "system_prompt": short_hash(system_prompt or ""),
        "template": short_hash(template),
        "parser": JUDGMENT_PARSER,
    }
    done = {}
    if cache_file is not None:
        Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
        records = repair_jsonl(cache_file)  # a damaged last line is dropped (and judged again)
        other = next((r for r in records if r.get("setup") != setup), None)
        if other is not None:
            changes = "; ".join(diff_settings(other.get("setup"), setup))
            raise ValueError(
                f"The judgments cache {str(cache_file)!r} was made with another judge setup ({changes}). Its "
                f"{len(records)} judgments were paid for: pass another cache file (--judge_cache) to keep them, or "
                "delete it to judge everything again with this setup."
            )
        done = {record["index"]: record for record in records}  # later lines win
    lock = threading.Lock()

    def inputs(row, base):
        question = prompt_text(row["prompt"])
        answer, base_answer = answer_text(row["completions"][0]), answer_text(base["completions"][0])
        return question, answer, base_answer, short_hash([setup, question, answer, base_answer])

    def judge(row, base, previous):
        question, answer, base_answer, key = inputs(row, base)
        verdicts, replies = list(previous["verdicts"]), list(previous["replies"])
        orders = [(answer, base_answer), (base_answer, answer)]  # the model as A, then as B
        record = {"index": row["index"], "key": key, "setup": setup, "verdicts": verdicts, "replies": replies}
        try:
            for order, (a, b) in enumerate(orders):
                if verdicts[order] is None:  # not yet judged, or the reply could not be parsed: ask (again)
                    verdicts[order], replies[order] = judge_pair(client, system_prompt, template, question, a, b)
        except BaseException:
            if cache_file is not None and replies != list(previous["replies"]):  # one order was paid for: keep it
                with lock:
                    append_jsonl(cache_file, [record])
            raise
        if cache_file is not None:  # saved by this worker at once, whatever the other prompts do
            with lock:
                append_jsonl(cache_file, [record])
        return record

    todo = []
    for row, base in zip(model_rows, baseline_rows):
        record = done.get(row["index"])
        if record is None or record.get("key") != inputs(row, base)[3]:
            todo.append((row, base, {"verdicts": [None, None], "replies": [None, None]}))
        elif None in record["verdicts"]:
            todo.append((row, base, record))
    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        futures = [pool.submit(judge, row, base, previous) for row, base, previous in todo]
        try:
            for future in tqdm(as_completed(futures), total=len(futures), desc="Judging", disable=not futures):
                record = future.result()
                done[record["index"]] = record
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    per_prompt = []
    for row in model_rows:
        record = done[row["index"]]
        outcome, score = combine_orders(*record["verdicts"])
        per_prompt.append({"index": row["index"], "outcome": outcome, "score": score, "verdicts": record["verdicts"]})
    return _result(
        model_name or _name(model_answers, "model"),
        baseline_name or _name(baseline_answers, "baseline"),
        f"llm:{client.model}",
        per_prompt,
        num_resamples,
        confidence,
        seed,
    )
