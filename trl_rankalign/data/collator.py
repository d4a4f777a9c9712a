"""Batches of ranked lists, stacked completion-major like TRL's ``[chosen; rejected]``."""

from dataclasses import dataclass
from typing import Any

import torch
from transformers.data.data_collator import DataCollatorMixin


def has_ref_logps(example: dict[str, Any]) -> bool:
    """Whether a row carries reference log-probs: this package's `ref_logps` or TRL's precomputed columns."""
    return "ref_logps" in example or "ref_chosen_logps" in example


def row_ref_logps(example: dict[str, Any]) -> list[float]:
    """The K reference log-probs of a row, in the row's completion order.

    Either the row's `ref_logps` (K floats), or TRL's precomputed columns as `DPOTrainer._precompute_ref_logps`
    stores them for a ranked batch: `ref_chosen_logps` (the top completion) and `ref_rejected_logps` (the others, padded
    to the dataset's longest list). Those are in rank order, which is the row's order: the trainer stores every list
    sorted best first.
    """
    if "ref_logps" in example:
        return list(example["ref_logps"])
    num_completions = len(example["completion_ids"])
    return [example["ref_chosen_logps"], *list(example["ref_rejected_logps"])[: num_completions - 1]]


@dataclass
class DataCollatorForRankedPreference(DataCollatorMixin):
    """
    Collates tokenised ranked lists into one padded batch of ``K_max * B`` sequences.

    Each example holds ``prompt_ids`` (list of ints), ``completion_ids`` (K lists of ints), ``scores`` (K floats) and
    optionally reference log-probs (``ref_logps``, K floats, or TRL's precomputed ``ref_chosen_logps`` /
    ``ref_rejected_logps``: see [`row_ref_logps`]). Each list is sorted by score, best first (stable, so tied completions keep
    their order), then padded to the batch's ``K_max`` with empty slots, and the branches are stacked
    completion-major: rows ``[k=0 of every prompt; k=1 of every prompt; ...]``, so per-sequence values
    ``(K_max * B,)`` reshape with ``values.view(K_max, B).T`` to ``(B, K_max)``. An empty slot is a single pad token
    with ``attention_mask`` 1 and ``completion_mask`` 0 (a fully masked row can give NaN in some attention kernels),
    so its log-prob is exactly 0 and ``list_mask`` marks it invalid.

    Returns ``input_ids``, ``attention_mask``, ``completion_mask`` (each ``(K_max * B, L)``), ``list_mask``
    ``(B, K_max)`` bool, ``scores`` ``(B, K_max)`` float32 (0 at empty slots) and, when the examples carry them,
    ``ref_logps`` ``(B, K_max)`` float32.

    Args:
        pad_token_id (`int`): Token used for padding.
        max_length (`int`, *optional*): Sequences (prompt + completion) longer than this are truncated, as in TRL.
        truncation_mode (`str`, *optional*, defaults to `"keep_start"`): `"keep_start"` or `"keep_end"`.
        pad_to_multiple_of (`int`, *optional*): Pad the sequence length to a multiple of this value.
        pad_to_num_completions (`int`, *optional*): Pad every list to this K instead of the batch's K_max (keeps
            shapes equal across processes when per-row values are gathered).

    Example:
    ```python
    >>> collator = DataCollatorForRankedPreference(pad_token_id=0)
    >>> examples = [
    ...     {"prompt_ids": [1, 2], "completion_ids": [[3], [4, 5]], "scores": [0.0, 1.0]},
    ...     {"prompt_ids": [6], "completion_ids": [[7], [8], [9]], "scores": [2.0, 3.0, 2.0]},
    ... ]
    >>> collator(examples)
    {'input_ids': tensor([[1, 2, 4, 5],    # prompt 0, rank 1 (score 1.0)
                          [6, 8, 0, 0],    # prompt 1, rank 1 (score 3.0)
                          [1, 2, 3, 0],    # prompt 0, rank 2 (score 0.0)
                          [6, 7, 0, 0],    # prompt 1, rank 2 (score 2.0, first of the tie)
                          [0, 0, 0, 0],    # prompt 0, empty slot
                          [6, 9, 0, 0]]),  # prompt 1, rank 3 (score 2.0)
     'attention_mask': tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]]),
     'completion_mask': tensor([[0, 0, 1, 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]]),
     'list_mask': tensor([[True, True, False], [True, True, True]]),
     'scores': tensor([[1., 0., 0.], [3., 2., 2.]])}
    ```
    """

    pad_token_id: int
    max_length: int | None = None
    truncation_mode: str = "keep_start"
    pad_to_multiple_of: int | None = None
    pad_to_num_completions: int | None = None
    return_tensors: str = "pt"

    def __post_init__(self):
        if self.truncation_mode not in ("keep_start", "keep_end"):
            raise ValueError(f"truncation_mode must be 'keep_start' or 'keep_end', got {self.truncation_mode!r}")

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        num_prompts = len(examples)
        has_ref = has_ref_logps(examples[0])
        k_max = max(len(example["completion_ids"]) for example in examples)
        if self.pad_to_num_completions is not None:
            if self.pad_to_num_completions < k_max:
                raise ValueError(
                    f"pad_to_num_completions={self.pad_to_num_completions} is smaller than a list of {k_max} in the batch"
                )
            k_max = self.pad_to_num_completions

        scores = torch.zeros(num_prompts, k_max, dtype=torch.float32)
        list_mask = torch.zeros(num_prompts, k_max, dtype=torch.bool)
        ref_logps = torch.zeros(num_prompts, k_max, dtype=torch.float32) if has_ref else None
        # sequences[k][b]: (ids, completion mask) of prompt b's k-th ranked completion
        sequences = [[([self.pad_token_id], [0])] * num_prompts for _ in range(k_max)]
        for b, example in enumerate(examples):
            prompt_ids, example_scores = example["prompt_ids"], example["scores"]
            example_ref_logps = row_ref_logps(example) if has_ref else None
            order = sorted(range(len(example_scores)), key=lambda k: -example_scores[k])  # stable, best first
            for rank, k in enumerate(order):
                completion_ids = example["completion_ids"][k]
                sequences[rank][b] = (
                    list(prompt_ids) + list(completion_ids),
                    [0] * len(prompt_ids) + [1] * len(completion_ids),
                )
                scores[b, rank] = float(example_scores[k])
                list_mask[b, rank] = True
                if has_ref:
                    ref_logps[b, rank] = float(example_ref_logps[k])

        rows = [row for rank_rows in sequences for row in rank_rows]  # completion-major
        if self.max_length is not None:
            sl = (
                slice(None, self.max_length) if self.truncation_mode == "keep_start" else slice(-self.max_length, None)
            )
            rows = [(ids[sl], mask[sl]) for ids, mask in rows]

        length = max(len(ids) for ids, _ in rows)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of

        def padded(values: list[list[int]], padding_value: int) -> torch.Tensor:  # right padding to `length`
            return torch.tensor([list(v) + [padding_value] * (length - len(v)) for v in values], dtype=torch.long)

        output = {
            "input_ids": padded([ids for ids, _ in rows], self.pad_token_id),
            "attention_mask": padded([[1] * len(ids) for ids, _ in rows], 0),
            "completion_mask": padded([mask for _, mask in rows], 0),
            "list_mask": list_mask,
            "scores": scores,
        }
        if has_ref:
            output["ref_logps"] = ref_logps
        return output
