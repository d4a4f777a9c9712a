"""Ranked data adapted to what other trainers read: best-vs-worst pairs, SFT rows of the top completion, prompts."""

import json
import logging

from .converters import top_ranked_completions
from .schema import is_ranked, rank_order


logger = logging.getLogger(__name__)


def column_names(dataset) -> list[str]:
    """Column names of a `Dataset`, or of an `IterableDataset` whose features are unknown (from its first row)."""
    if dataset.column_names is not None:
        return list(dataset.column_names)
    return list(next(iter(dataset)).keys())


def ranked_to_pairwise(dataset):
    """Ranked rows to TRL pairwise rows `(prompt, chosen, rejected)`: the best against the worst completion.

    Fully tied lists have no preference and are removed (the count is logged). Non-ranked data is returned as is.
    """
    columns = column_names(dataset)
    if not is_ranked(columns):
        return dataset

    def is_untied(example):
        return max(example["scores"]) > min(example["scores"])

    def best_worst(example):
        order = rank_order(example["scores"])
        completions = example["completions"]
        return {"prompt": example["prompt"], "chosen": completions[order[0]], "rejected": completions[order[-1]]}

    total = len(dataset) if hasattr(dataset, "__len__") else None
    dataset = dataset.filter(is_untied)
    if total is not None and total != len(dataset):
        logger.warning("ranked_to_pairwise: removed %d of %d fully tied lists.", total - len(dataset), total)
    return dataset.map(best_worst, remove_columns=columns)


def prompts_of(dataset):
    """Prompt-only rows `{"prompt"}` of ranked, pairwise, SFT or prompt rows, each distinct prompt once (first-seen
    order): the prompt set of the online stages (`raft`, `rloo`). A streamed dataset keeps its repeats."""
    columns = column_names(dataset)
    if "prompt" not in columns:
        raise ValueError(
            f"The online stages read the prompts of the recipe's data, but it has no 'prompt' column ({columns}); "
            "implicit-prompt pairs need an explicit prompt (dataset_converter: pairwise)."
        )
    dataset = dataset.select_columns(["prompt"])
    if not hasattr(dataset, "__len__"):
        return dataset
    seen, keep = set(), []
    for index, prompt in enumerate(dataset["prompt"]):
        key = json.dumps(prompt, sort_keys=True, ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            keep.append(index)
    if len(keep) != len(dataset):
        logger.info("prompts_of: %d distinct prompts out of %d rows.", len(keep), len(dataset))
    return dataset.select(keep)


def to_sft(dataset):
    """SFT rows (prompt, completion) of each ranked list's top completion; other data is returned as is."""
    return top_ranked_completions(dataset) if is_ranked(column_names(dataset)) else dataset
