"""The shipped tiny datasets: ranked lists, SFT rows, the prompt set and reward-model pairs of the tiny language."""

import json
from pathlib import Path

from .model import RANKED_PATH, SFT_PATH


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _split_rows(rows: list[dict], split: str | None, test_size: int) -> list[dict]:
    if split is None:
        return rows
    if split == "train":
        return rows[:-test_size]
    if split == "test":
        return rows[-test_size:]
    raise ValueError(f"Unknown split {split!r}; expected None, 'train' or 'test'.")


def tiny_ranked_dataset(split: str | None = None, test_size: int = 30):
    """
    The shipped ranked-preference data of the tiny review language (300 rows).

    Each row is `{"prompt": str, "completions": list[str], "scores": list[float]}` with K in 2..6 completions,
    `scores[k]` the ground-truth reward ([`trl_rankalign.tiny.language.true_reward`]) of `completions[k]`; many lists
    contain ties, none is fully tied.

    Args:
        split (`str`, *optional*):
            `None` for all rows, `"train"` for all but the last `test_size` rows, `"test"` for the last `test_size`.
        test_size (`int`, *optional*, defaults to `30`):
            Number of held-out rows.

    Returns:
        [`~datasets.Dataset`]
    """
    from datasets import Dataset

    return Dataset.from_list(_split_rows(_read_jsonl(RANKED_PATH), split, test_size))


def tiny_sft_dataset(split: str | None = None, test_size: int = 30):
    """
    The shipped prompt-completion SFT data of the tiny review language (300 rows of mildly positive reviews).

    Each row is `{"prompt": str, "completion": str}`; `split` and `test_size` as in [`tiny_ranked_dataset`].

    Returns:
        [`~datasets.Dataset`]
    """
    from datasets import Dataset

    return Dataset.from_list(_split_rows(_read_jsonl(SFT_PATH), split, test_size))


def tiny_prompt_dataset(split: str | None = None):
    """The distinct prompts of the shipped tiny ranked data (104 in all), first-seen order: RSO's tiny prompt set."""
    from datasets import Dataset

    return Dataset.from_dict({"prompt": list(dict.fromkeys(tiny_ranked_dataset(split)["prompt"]))})


def tiny_reward_dataset(split: str | None = None):
    """Pairwise data for a reward model of the tiny language: every untied pair of each shipped ranked list.

    Rows `{"prompt", "chosen", "rejected"}` (chosen has the higher ground-truth reward), in list order; `split` as in
    `tiny_ranked_dataset`.
    """
    from datasets import Dataset

    rows = []
    for example in tiny_ranked_dataset(split):
        completions, scores = example["completions"], example["scores"]
        for i in range(len(scores)):
            for j in range(i + 1, len(scores)):
                if scores[i] != scores[j]:
                    chosen, rejected = (i, j) if scores[i] > scores[j] else (j, i)
                    rows.append(
                        {"prompt": example["prompt"], "chosen": completions[chosen], "rejected": completions[rejected]}
                    )
    return Dataset.from_list(rows)
