"""How well each automatic judge agrees with human preferences: "which metric should I trust for this task".

Human comparisons come in as *items*: one prompt (or one context per response, for multi-turn judgments), K >= 2
responses and the humans' scores of them (higher is better; equal scores are a human tie). [`load_comparisons`]
reads TRL pairwise rows (`prompt`, `chosen`, `rejected`; optional `reference`), this package's ranked rows (`prompt`,
`completions`, `scores`) and MT-Bench's human judgments (`lmsys/mt_bench_human_judgments`: `question_id`, `model_a`,
`model_b`, `winner`, `conversation_a`, `conversation_b`, `turn`, `judge`); `openai/summarize_from_feedback` and
`Anthropic/hh-rlhf` rows go through this package's converters first. All five schemas are told apart by their columns.

MT-Bench human judgments are kept apart by rater, as FastChat's `compute_agreement.py` does: `expert_*` votes are the
humans the judge is compared with, `author_*` votes a group of their own, the `gpt4_pair` split's votes (`judge` a
`[model, prompt]` pair; label `tie (inconsistent)` when its two orders disagreed) another; by default the experts are
used when there are any, else the authors, else every row (`raters` picks one group, or `"all"`).

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
- `items` and `pairs`: how many were used;
- `fastchat` (MT-Bench human judgments only): FastChat's `compute_agreement.py` numbers, per turn and overall, with
  ties (a judge tie agrees with a human tie, of any kind) and without ties (pairs where either side is a tie left
  out): `{"turn_1": {"with_ties": {"agree", "total", "ratio"}, "without_ties": {...}}, "turn_2": ..., "overall":
  ...}`. The judge's vote on a pair is `model_a`, `model_b` or `tie` from its two scores.

The LLM judge follows FastChat's rules: each pair is judged in both orders and is a win only when both orders name
the same response, any tie or disagreement a tie; on a turn-2 MT-Bench item each order shows each model's own
conversation (with FastChat's prompts, `judge_prompts`: `pair-v2` for turn 1, `pair-v2-multi-turn` for turn 2).
"""

import json
import logging
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
from . import fastchat
from .win_rate import judge_pair


__all__ = [
    "MT_BENCH_WINNERS",
    "REFERENCE_JUDGES",
    "AgreementResult",
    "agreement",
    "load_comparisons",
    "plot_agreement",
    "score_items",
]

logger = logging.getLogger(__name__)

REFERENCE_JUDGES = ("bleu", "rouge", "chrf")
# FastChat's labels (compute_agreement.py): any label holding "tie" is a tie between the two
MT_BENCH_WINNERS = {
    "model_a": (1.0, 0.0),
    "model_b": (0.0, 1.0),
    "tie": (0.5, 0.5),
    "tie (bothbad)": (0.5, 0.5),
    "tie (inconsistent)": (0.5, 0.5),  # the gpt4_pair split: the judge's two orders disagreed
}
FORMATS = ("auto", "pairwise", "ranked", "mt_bench_human", "summarize_from_feedback", "hh_rlhf")
RATERS = ("auto", "expert", "author", "gpt4-pair", "all")


def rater_group(judge) -> str:
    """FastChat's `get_judge_name`: `expert_*` -> "expert" (FastChat's "human"), `author_*` -> "author", a
    `[model, prompt]` pair (the gpt4_pair split) -> "gpt4-pair" (any model); anything else is its own name."""
    if isinstance(judge, list | tuple):
        return "gpt4-pair"
    judge = str(judge)
    if judge.startswith("expert"):
        return "expert"
    if judge.startswith("author"):
        return "author"
    return judge


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
    return {
        "prompts": prompts,
        "responses": responses,
        "human": list(MT_BENCH_WINNERS[winner]),
        "row": index,
        "turn": turn,
        "vote": "tie" if "tie" in winner else winner,
        "rater": rater_group(row.get("judge", "")),
        "question_id": row.get("question_id"),
    }


def _detect(rows: list[dict]) -> str:
    columns = set(rows[0])
    if {"winner", "conversation_a", "conversation_b"} <= columns:
        return "mt_bench_human"
    if {"info", "summaries", "choice"} <= columns:
        return "summarize_from_feedback"
    if {"completions", "scores"} <= columns:
        return "ranked"
    if {"chosen", "rejected"} <= columns and "prompt" not in columns:
        if isinstance(rows[0]["chosen"], str) and "Human:" in rows[0]["chosen"]:
            return "hh_rlhf"  # Anthropic/hh-rlhf: whole transcripts, the prompt is their shared prefix
    if {"chosen", "rejected"} <= columns:
        return "pairwise"
    raise ValueError(
        f"Cannot tell the format of the comparisons from their columns {sorted(columns)}: pass `format` "
        f"(one of {list(FORMATS)})."
    )


def load_comparisons(
    source: Any, format: str = "auto", reference_column: str = "reference", raters: str = "auto"
) -> list[dict]:
    """Read human comparisons as items `{"prompts": [K contexts], "responses": [K texts], "human": [K scores],
    "reference"?: str | list[str], "row": index}` (MT-Bench items also carry `turn`, `vote`, `rater`,
    `question_id`).

    `source` is a `.jsonl`/`.json` file, a saved dataset folder, a `datasets.Dataset` or a list of rows. Rows that
    cannot be read raise `ValueError` naming the row and the field; an empty set is refused. `raters` picks the
    MT-Bench rater group (see the module docstring).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if raters not in RATERS:
        raise ValueError(f"raters must be one of {RATERS}, got {raters!r}")
    rows = _rows(source)
    if not rows:
        raise ValueError("The comparisons are empty: there is nothing to measure agreement on.")
    if format == "auto" and _detect(rows) in ("summarize_from_feedback", "hh_rlhf"):
        format = _detect(rows)
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
    if format == "mt_bench_human":
        items = _pick_raters(items, raters)
    return items


def _pick_raters(items: list[dict], raters: str) -> list[dict]:
    groups = sorted({item["rater"] for item in items})
    if raters == "all":
        return items
    if raters == "auto":
        raters = next((group for group in ("expert", "author") if group in groups), None)
        if raters is None:
            return items
    kept = [item for item in items if item["rater"] == raters]
    if not kept:
        raise ValueError(f"No MT-Bench judgments by the {raters!r} raters (the rows have {groups}).")
    if len(kept) < len(items):
        logger.info(
            "Agreement with the %s raters: %d of %d judgments (groups: %s).", raters, len(kept), len(items), groups
        )
    return kept


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
            _fail(
                item["row"],
                "reference",
                f"the {metric} judge needs a reference answer (a `reference` column; summarize_from_feedback, hh-rlhf "
                "and MT-Bench judgments have none: use --reward_model, --reward_fn or --judge_base_url)",
            )
        references = [reference] if isinstance(reference, str) else list(reference)
        if metric == "rouge":
            scores.append(
                [max(rouge.score(ref, r)["rougeL"].fmeasure for ref in references) for r in item["responses"]]
            )
        else:
            scores.append([scorer.sentence_score(r, references).score for r in item["responses"]])
    return scores


def _conversation(context, response) -> tuple[list[str], list[str]]:
    """The user questions and assistant answers of a conversation `context` (messages) ending in `response`."""
    messages = list(context) if isinstance(context, list) else [{"role": "user", "content": str(context)}]
    questions = [m["content"] for m in messages if m.get("role") == "user"]
    answers = [m["content"] for m in messages if m.get("role") == "assistant"] + [response]
    return questions, answers


def _transcript(questions: Sequence[str], answers: Sequence[str], name: str) -> str:
    return "\n\n".join(f"### User:\n{q}\n\n### {name}:\n{a}" for q, a in zip(questions, answers))


def _llm_pair(item, i, j, client, template, system_prompt, prompts) -> str:
    """FastChat's outcome (`win`/`tie`/`loss`/`error`) of response i against j, judged in both orders; on a
    multi-turn item each order shows each model's own conversation."""
    sides = {k: _conversation(item["prompts"][k], item["responses"][k]) for k in (i, j)}
    turns = len(sides[i][1])
    if prompts is not None and turns > 2:
        raise ValueError(f"row {item['row']}: FastChat's judge prompts judge turns 1 and 2 only, not {turns}.")
    verdicts = []
    for first, second in ((i, j), (j, i)):
        (qa, aa), (qb, ab) = sides[first], sides[second]
        if prompts is not None:
            prompt = prompts["pair-v2-multi-turn" if turns == 2 else "pair-v2"]
            messages = [
                {"role": "system", "content": prompt["system_prompt"]},
                {"role": "user", "content": fastchat.pair_user_prompt(prompt, qa, aa, ab)},
            ]
            verdicts.append(fastchat.parse_verdict(client.chat(messages)))
            continue
        if turns > 1:  # the built-in template: each model's whole conversation as its answer
            question = qa[-1]
            answer_a, answer_b = _transcript(qa, aa, "Assistant A"), _transcript(qb, ab, "Assistant B")
        else:
            question, answer_a, answer_b = prompt_text(item["prompts"][first]), aa[-1], ab[-1]
        verdict = judge_pair(client, system_prompt, template, question, answer_a, answer_b)[0]
        verdicts.append(verdict or "error")
    g1 = {"A": "model_1", "B": "model_2"}.get(verdicts[0], verdicts[0])
    g2 = {"A": "model_2", "B": "model_1"}.get(verdicts[1], verdicts[1])
    return fastchat.pair_outcome(g1, g2)


def _llm_scores(
    items: list[dict], client: JudgeClient, template: str, system_prompt: str | None, prompts: dict | None = None
) -> list[list[float]]:
    """Each response's wins over the item's other responses (a tie 1/2), every pair judged in both orders with
    FastChat's rule; a pair whose verdicts cannot be parsed counts for neither."""
    scores = []
    for item in items:
        wins = [0.0] * len(item["responses"])
        for i in range(len(wins)):
            for j in range(i + 1, len(wins)):
                outcome = _llm_pair(item, i, j, client, template, system_prompt, prompts)
                if outcome != "error":
                    score = {"win": 1.0, "tie": 0.5, "loss": 0.0}[outcome]
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
    judge_prompts: str | os.PathLike | dict | None = None,
) -> list[list[float]]:
    """One score per response of every item from `judge`: `"bleu"`, `"rouge"`, `"chrf"`, `"reward"` (with `reward`:
    a reward-model path or a callable `(prompts, completions) -> rewards`) or `"llm"` (with `client`; FastChat's
    `judge_prompts.jsonl` path or dict to judge with `pair-v2` / `pair-v2-multi-turn` instead of `template`)."""
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
        if judge_prompts is not None and not isinstance(judge_prompts, dict):
            judge_prompts = fastchat.load_judge_prompts(judge_prompts, "pair")
        return _llm_scores(items, client, template, system_prompt, judge_prompts)
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
    fastchat: dict | None = None

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
    fastchat_numbers = fastchat_agreement(items, scores) if any("vote" in item for item in items) else None
    if not per_item:
        return AgreementResult(
            judge, None, None, None, None, len(items), 0, human_ties, judge_ties, fastchat=fastchat_numbers
        )
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
        fastchat=fastchat_numbers,
    )


def _judge_vote(judged: Sequence[float]) -> str:
    return "model_a" if judged[0] > judged[1] else "model_b" if judged[0] < judged[1] else "tie"


def fastchat_agreement(items: list[dict], scores: list[list[float]]) -> dict:
    """FastChat's `compute_agreement.py` numbers (`get_mt_bench_agreement`, judge vs "human") on MT-Bench items: per
    human vote, agreement of the judge's vote (`model_a`/`model_b`/`tie` from its two scores) with it; with ties any
    two ties agree, without ties a pair where either vote is a tie is left out. Per turn and overall."""
    counts: dict[str, dict[str, list[int]]] = {}
    for item, judged in zip(items, scores):
        if "vote" not in item:
            continue
        judge_vote, human_vote = _judge_vote(judged), item["vote"]
        for scope in (f"turn_{item['turn']}", "overall"):
            stats = counts.setdefault(scope, {"with_ties": [0, 0], "without_ties": [0, 0]})
            agree = int(judge_vote == human_vote)  # both ties ("tie" in the label) count as equal
            stats["with_ties"][0] += agree
            stats["with_ties"][1] += 1
            if "tie" not in (judge_vote, human_vote):
                stats["without_ties"][0] += agree
                stats["without_ties"][1] += 1
    return {
        scope: {
            kind: {"agree": agree, "total": total, "ratio": agree / total if total else None}
            for kind, (agree, total) in stats.items()
        }
        for scope, stats in sorted(counts.items(), key=lambda kv: (kv[0] == "overall", kv[0]))
    }


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
