"""Reference-based text metrics: corpus BLEU and chrF with sacrebleu, ROUGE with Google's rouge-score.

Nothing is re-implemented: the numbers are the libraries' own, with their defaults (sacrebleu's `13a` tokenizer and
exponential smoothing; chrF with character 6-grams, `word_order=2` for chrF++; ROUGE F-measures with the Porter
stemmer, averaged over examples, `rougeLsum` splitting sentences on newlines). Scores are on a 0-100 scale.
"""

import os
from collections.abc import Sequence
from typing import Any

from ..sampling.answers import answer_text, load_answers


__all__ = ["METRICS", "answers_text_metrics", "compute_text_metrics"]

METRICS = ("bleu", "rouge", "chrf")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def _reference_lists(references: Sequence[str | Sequence[str]], num_predictions: int) -> list[list[str]]:
    if len(references) != num_predictions:
        raise ValueError(f"{num_predictions} predictions but {len(references)} references.")
    out = []
    for i, ref in enumerate(references):
        refs = [ref] if isinstance(ref, str) else list(ref)
        if not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"Reference {i} must be a string or a non-empty list of strings, got {ref!r}.")
        out.append(refs)
    return out


def compute_text_metrics(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    metrics: Sequence[str] = METRICS,
    rouge_types: Sequence[str] = ROUGE_TYPES,
    use_stemmer: bool = True,
    bleu_tokenize: str | None = None,
    chrf_word_order: int = 0,
) -> dict[str, float]:
    """
    Corpus metrics of `predictions` against `references` (one string, or a list of strings, per prediction).

    Args:
        metrics: any of `"bleu"`, `"rouge"`, `"chrf"`.
        rouge_types: ROUGE variants; each gives a key of that name (mean F-measure x 100).
        use_stemmer: Porter stemming in ROUGE.
        bleu_tokenize: sacrebleu tokenizer (`"13a"` by default; `"zh"`, `"ja-mecab"`, `"flores200"`, ... for other
            scripts).
        chrf_word_order: 0 for chrF, 2 for chrF++.

    Returns:
        `{"bleu", "rouge1", "rouge2", "rougeL", "rougeLsum", "chrf", "num_examples"}` (the requested ones), plus
        `"bleu_signature"` / `"chrf_signature"`, sacrebleu's reproducibility strings.
    """
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"Unknown metrics {sorted(unknown)}; choose from {list(METRICS)}.")
    if not predictions:
        raise ValueError("No predictions to score.")
    refs = _reference_lists(references, len(predictions))
    predictions = list(predictions)
    # sacrebleu takes reference *streams* (the j-th reference of every example); None pads shorter lists
    num_streams = max(len(r) for r in refs)
    streams = [[r[j] if j < len(r) else None for r in refs] for j in range(num_streams)]
    result: dict[str, Any] = {"num_examples": len(predictions)}
    if "bleu" in metrics:
        from sacrebleu.metrics import BLEU

        bleu = BLEU(tokenize=bleu_tokenize) if bleu_tokenize else BLEU()
        result["bleu"] = bleu.corpus_score(predictions, streams).score
        result["bleu_signature"] = str(bleu.get_signature())
    if "rouge" in metrics:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer)
        totals = dict.fromkeys(rouge_types, 0.0)
        for prediction, targets in zip(predictions, refs):
            scores = scorer.score_multi(targets, prediction)  # best over references, as rouge-score defines it
            for rouge_type in rouge_types:
                totals[rouge_type] += scores[rouge_type].fmeasure
        result.update({k: 100 * v / len(predictions) for k, v in totals.items()})
    if "chrf" in metrics:
        from sacrebleu.metrics import CHRF

        chrf = CHRF(word_order=chrf_word_order)
        result["chrf"] = chrf.corpus_score(predictions, streams).score
        result["chrf_signature"] = str(chrf.get_signature())
    return result


def answers_text_metrics(
    answers: str | os.PathLike | Sequence[dict], prompts: Sequence[dict], **kwargs
) -> dict[str, float]:
    """[`compute_text_metrics`] of an answers file against the `reference` of each prompt row (same prompt set, joined
    by index; the first answer of each prompt is scored). Every answered prompt needs a reference."""
    rows = load_answers(answers)
    references = []
    for row in rows:
        index = row["index"]
        if index >= len(prompts) or prompts[index]["prompt"] != row["prompt"]:
            raise ValueError(f"Answer {index} does not belong to this prompt set (different prompt at that index).")
        if prompts[index].get("reference") is None:
            raise ValueError(f"Prompt set row {index} has no reference: pass the right `reference_column`.")
        references.append(prompts[index]["reference"])
    return compute_text_metrics([answer_text(row["completions"][0]) for row in rows], references, **kwargs)
