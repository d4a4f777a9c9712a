"""How well each automatic judge agrees with human preferences: "which metric should I trust for this task".

Human comparisons come in as *items*: one prompt (or one context per response, for multi-turn judgments), K >= 2
responses and the humans' scores of them (higher is better; equal scores are a human tie). [`load_comparisons`]
reads TRL pairwise rows (`prompt`, `chosen`, `rejected`; optional `reference`), this package's ranked rows (`prompt`,
`completions`, `scores`) and MT-Bench's human judgments (`lmsys/mt_bench_human_judgments`: `question_id`, `model_a`,
`model_b`, `winner`, `conversation_a`, `conversation_b`, `turn`); `openai/summarize_from_feedback` and
`Anthropic/hh-rlhf` go through this package's converters first (`format="summarize_from_feedback"` / `"hh_rlhf"`).

Every judge scores every response ([`score_items`]): `bleu`, `rouge` (ROUGE-L F) and `chrf` against the item's
`reference` (sentence level, sacrebleu / rouge-score), a reward model or a Python callable
([`trl_rankalign.sampling.scorers.as_scorer`]), or an LLM judge asked pairwise in both orders (each response's score
is its number of wins over the item's other responses; [`trl_rankalign.evaluation.win_rate.combine_orders`] turns
two verdicts into one). [`agreement`] then reports, per judge:

- `agreement`: over the pairs the humans decided, the share the judge orders the same way (a judge tie counts 1/2);
  human ties are counted apart (`human_ties`) and left out; `judge_ties` counts the judge's ties on decided pairs;
- a bootstrap 95% interval of the agreement, resampling items;
- `kendall_tau`: the mean Kendall τ-b between the judge's and the humans' scores over items with K >= 3 (None when
  every item is a pair);
- `items` and `pairs`: how many were used.
"""

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..metrics import kendall_tau
from ..sampling.llm_judge import DEFAULT_JUDGE_SYSTEM_PROMPT, DEFAULT_PAIRWISE_TEMPLATE, JudgeClient
from ..sampling.prompts import answer_text, load_rows, prompt_text
from ..sampling.scorers import as_scorer
from .win_rate import combine_orders, judge_pair


__all__ = [
    "MT_BENCH_WINNERS",
    "REFERENCE_JUDGES",
    "AgreementResult",
    "agreement",
    "load_comparisons",
    "plot_agreement",
    "score_items",
]

REFERENCE_JUDGES = ("bleu", "rouge", "chrf")
# FastChat's labels (compute_agreement.py): a tie "(bothbad)" is still a tie between the two
MT_BENCH_WINNERS = {"model_a": (1.0, 0.0), "model_b": (0.0, 1.0), "tie": (0.5, 0.5), "tie (bothbad)": (0.5, 0.5)}
FORMATS = ("auto", "pairwise", "ranked", "mt_bench_human", "summarize_from_feedback", "hh_rlhf")


def _fail(index: int, field: str, message: str):
    raise ValueError(f"row {index}, field '{field}': {message}")


# ------------------------------------------------------------------------------------------------------ items
def _rows(source: Any) -> list[dict]:
    if isinstance(source, str | os.PathLike):
        return load_rows(source)
    if hasattr(source, "to_list"):
        return source.to_list()
    return [dict(row) for row in source]


def _mt_bench_item(row: dict, index: int) -> dict:
    winner = row.get("winner")
    if winner not in MT_BENCH_WINNERS:
        _fail(index, "winner", f"unknown label {winner!r}; expected one of {sorted(MT_BENCH_WINNERS)}")
    turn = row.get("turn")
    if not isinstance(turn, int) or turn < 1:
        _fail(index, "turn", f"expected a turn number >= 1, got {turn!r}")
    prompts, responses = [], []
    for side in ("conversation_a", "conversation_b"):
        conversation = row.get(side)
        if not isinstance(conversation, list):
            _fail(index, side, "missing or not a list of messages")
        # The judged turn is the turn-th assistant message; its context is everything before it
        assistant = [i for i, m in enumerate(conversation) if m.get("role") == "assistant"]
        if len(assistant) < turn:
            _fail(index, side, f"has {len(assistant)} assistant turns, fewer than turn={turn}")
        position = assistant[turn - 1]
        context = conversation[:position]
        if not context or context[-1].get("role") != "user":
            _fail(index, f"{side}[{position - 1}].role", "expected a user turn before the judged assistant turn")
        prompts.append(context)
        responses.append(conversation[position]["content"])
    return {"prompts": prompts, "responses": responses, "human": list(MT_BENCH_WINNERS[winner]), "row": index}


def _detect(rows: list[dict]) -> str:
    columns = set(rows[0])
    if {"winner", "conversation_a", "conversation_b"} <= columns:
        return "mt_bench_human"
    if {"completions", "scores"} <= columns:
        return "ranked"
    if {"chosen", "rejected"} <= columns:
        return "pairwise"
    raise ValueError(
        f"Cannot tell the format of the comparisons from their columns {sorted(columns)}: pass `format` "
        f"(one of {list(FORMATS)})."
    )


def load_comparisons(source: Any, format: str = "auto", reference_column: str = "reference") -> list[dict]:
    """Read human comparisons as items `{"prompts": [K contexts], "responses": [K texts], "human": [K scores],
    "reference"?: str | list[str], "row": index}`.

    `source` is a `.jsonl`/`.json` file, a saved dataset folder, a `datasets.Dataset` or a list of rows. Rows that
    cannot be read raise `ValueError` naming the row and the field; an empty set is refused.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    rows = _rows(source)
    if not rows:
        raise ValueError("The comparisons are empty: there is nothing to measure agreement on.")
    if format in ("summarize_from_feedback", "hh_rlhf"):
        from datasets import Dataset

        from ..data.converters import convert

        references = [row.get(reference_column) for row in rows]
        rows = [
            {**row, reference_column: ref} for row, ref in zip(convert(Dataset.from_list(rows), format), references)
        ]
        format = "ranked"
    format = _detect(rows) if format == "auto" else format
    items = []
    for index, row in enumerate(rows):
        if format == "mt_bench_human":
            item = _mt_bench_item(row, index)
        else:
            if format == "pairwise":
                for field in ("prompt", "chosen", "rejected"):
                    if row.get(field) in (None, "", []):
                        _fail(index, field, "missing or empty")
                responses, human = [row["chosen"], row["rejected"]], [1.0, 0.0]
            else:
                for field in ("prompt", "completions", "scores"):
                    if row.get(field) in (None, "", []):
                        _fail(index, field, "missing or empty")
                responses, human = list(row["completions"]), list(row["scores"])
                if len(responses) < 2 or len(human) != len(responses):
                    _fail(index, "scores", f"need K >= 2 completions with one score each, got {len(human)} scores")
                for k, score in enumerate(human):
                    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
                        _fail(index, f"scores[{k}]", f"expected a finite number, got {score!r}")
            item = {
                "prompts": [row["prompt"]] * len(responses),
                "responses": [answer_text(r) for r in responses],
                "human": [float(h) for h in human],
                "row": index,
            }
        if row.get(reference_column) is not None:
            item["reference"] = row[reference_column]
        items.append(item)
    return items


# ----------------------------------------------------------------------------------------------------- judges
def _reference_scores(items: list[dict], metric: str) -> list[list[float]]:
    if metric == "rouge":
        from rouge_score import rouge_scorer

        rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    else:
        from sacrebleu.metrics import BLEU, CHRF

        scorer = BLEU(effective_order=True) if metric == "bleu" else CHRF()
    scores = []
    for item in items:
        reference = item.get("reference")
        if reference in (None, "", []):
            _fail(item["row"], "reference", f"the {metric} judge needs a reference answer")
        references = [reference] if isinstance(reference, str) else list(reference)
        if metric == "rouge":
            scores.append(
                [max(rouge.score(ref, r)["rougeL"].fmeasure for ref in references) for r in item["responses"]]
            )
        else:
            scores.append([scorer.sentence_score(r, references).score for r in item["responses"]])
    return scores


def _llm_scores(items: list[dict], client: JudgeClient, template: str, system_prompt: str | None) -> list[list[float]]:
    """Each response's wins over the item's other responses, every pair judged in both orders (cancels position
    bias); a pair whose verdicts cannot be parsed counts for neither."""
    scores = []
    for item in items:
        wins = [0.0] * len(item["responses"])
        for i in range(len(wins)):
            for j in range(i + 1, len(wins)):
                question = prompt_text(item["prompts"][i])
                a, b = item["responses"][i], item["responses"][j]
                first = judge_pair(client, system_prompt, template, question, a, b)[0]
                second = judge_pair(client, system_prompt, template, question, b, a)[0]
                _, score = combine_orders(first, second)
                if score is not None:
                    wins[i] += score
                    wins[j] += 1 - score
        scores.append(wins)
    return scores


def score_items(
    items: list[dict],
    judge: str,
    reward: str | Callable[..., Any] | None = None,
    client: JudgeClient | None = None,
    template: str = DEFAULT_PAIRWISE_TEMPLATE,
    system_prompt: str | None = DEFAULT_JUDGE_SYSTEM_PROMPT,
) -> list[list[float]]:
    """One score per response of every item from `judge`: `"bleu"`, `"rouge"`, `"chrf"`, `"reward"` (with `reward`:
    a reward-model path or a callable `(prompts, completions) -> rewards`) or `"llm"` (with `client`)."""
    if judge in REFERENCE_JUDGES:
        return _reference_scores(items, judge)
    if judge == "reward":
        if reward is None:
            raise ValueError("The reward judge needs a reward model or a reward function.")
        scorer = as_scorer(reward)
        return [scorer(list(item["prompts"]), list(item["responses"])) for item in items]
    if judge == "llm":
        if client is None:
            raise ValueError("The LLM judge needs a judge client (a base URL and a model).")
        return _llm_scores(items, client, template, system_prompt)
    raise ValueError(f"Unknown judge {judge!r}: choose from {[*REFERENCE_JUDGES, 'reward', 'llm']}.")


# -------------------------------------------------------------------------------------------------- agreement
@dataclass
class AgreementResult:
    judge: str
    agreement: float | None
    ci_low: float | None
    ci_high: float | None
    kendall_tau: float | None
    items: int
    pairs: int
    human_ties: int
    judge_ties: int

    def to_dict(self) -> dict:
        return asdict(self)


def _pair_outcomes(human: Sequence[float], judged: Sequence[float]) -> tuple[list[float], int, int]:
    """Per human-decided pair: 1 if the judge orders it the same way, 0.5 on a judge tie, 0 otherwise."""
    outcomes, human_ties, judge_ties = [], 0, 0
    for i in range(len(human)):
        for j in range(i + 1, len(human)):
            if human[i] == human[j]:
                human_ties += 1
                continue
            if judged[i] == judged[j]:
                judge_ties += 1
                outcomes.append(0.5)
            else:
                outcomes.append(1.0 if (human[i] > human[j]) == (judged[i] > judged[j]) else 0.0)
    return outcomes, human_ties, judge_ties


def agreement(
    items: list[dict], scores: list[list[float]], judge: str, num_resamples: int = 1000, seed: int = 0
) -> AgreementResult:
    """Agreement of one judge's `scores` with the humans' over `items` (see the module docstring)."""
    if len(scores) != len(items):
        raise ValueError(f"{len(scores)} score lists for {len(items)} items")
    per_item, human_ties, judge_ties, taus = [], 0, 0, []
    for item, judged in zip(items, scores):
        outcomes, h_ties, j_ties = _pair_outcomes(item["human"], judged)
        human_ties, judge_ties = human_ties + h_ties, judge_ties + j_ties
        if outcomes:
            per_item.append(outcomes)
        if len(item["human"]) >= 3:
            tau = kendall_tau(
                torch.tensor([judged], dtype=torch.float32),
                torch.tensor([item["human"]], dtype=torch.float32),
                torch.ones(1, len(judged), dtype=torch.bool),
            )[0].item()
            if not math.isnan(tau):
                taus.append(tau)
    pairs = sum(len(o) for o in per_item)
    if not per_item:
        return AgreementResult(judge, None, None, None, None, len(items), 0, human_ties, judge_ties)
    sums = np.array([sum(o) for o in per_item])
    counts = np.array([len(o) for o in per_item])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(per_item), size=(num_resamples, len(per_item)))  # resample items
    resampled = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    low, high = np.quantile(resampled, [0.025, 0.975])
    return AgreementResult(
        judge=judge,
        agreement=float(sums.sum() / counts.sum()),
        ci_low=float(low),
        ci_high=float(high),
        kendall_tau=float(np.mean(taus)) if taus else None,
        items=len(items),
        pairs=pairs,
        human_ties=human_ties,
        judge_ties=judge_ties,
    )


def plot_agreement(results: Sequence[AgreementResult], path: str | os.PathLike, dpi: int = 100) -> str:
    """A bar chart of each judge's agreement with its 95% interval (matplotlib, imported here only)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = [r for r in results if r.agreement is not None]
    figure = Figure(figsize=(max(4, 1.2 * len(shown) + 2), 3.5))
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    values = [r.agreement for r in shown]
    errors = [[r.agreement - r.ci_low for r in shown], [r.ci_high - r.agreement for r in shown]]
    axis.bar([r.judge for r in shown], values, yerr=errors, capsize=4, color="tab:blue")
    axis.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
    axis.set_ylim(0, 1)
    axis.set_ylabel("agreement with humans")
    axis.legend(loc="lower right")
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    return str(path)


def write_agreement(results: Sequence[AgreementResult], output: str | os.PathLike) -> None:
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps({r.judge: r.to_dict() for r in results}, indent=2) + "\n")
