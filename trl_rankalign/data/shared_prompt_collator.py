"""Packing for the shared-prompt forward: each prompt once, its K completions as branches of one row.

See [`trl_rankalign.forward`] for the layout and why it gives the same log-probs as the unshared rows.
"""

from dataclasses import dataclass
from typing import Any

import torch

from .collator import DataCollatorForRankedPreference, has_ref_logps, row_ref_logps


PREFIX_SEGMENT = 0  # the prompt shared by every branch of a row
PAD_SEGMENT = -1  # padding at the end of a packed row; branch k (0-based rank) is segment k + 1


def _round_up(length: int, multiple: int | None) -> int:
    if not multiple:
        return length
    return -(-length // multiple) * multiple


def pack_shared_prompt(
    examples: list[dict[str, Any]],
    pad_token_id: int,
    max_length: int | None = None,
    truncation_mode: str = "keep_start",
    pad_to_multiple_of: int | None = None,
    pad_to_num_completions: int | None = None,
) -> dict[str, torch.Tensor]:
    """
    Pack each ranked list into one row `[prompt[:-1], branch_1, …, branch_K]` (see the module docstring).

    Each example holds `prompt_ids` (list of ints), `completion_ids` (K lists of ints), `scores` (K floats) and
    optionally `ref_logps` (K floats). Lists are sorted best first (stable) and padded to the batch's `K_max` (or
    `pad_to_num_completions`) with empty slots, exactly as [`DataCollatorForRankedPreference`] does, so `list_mask`,
    `scores` and `ref_logps` are identical to its outputs. `max_length` truncates each `prompt + completion_k` as the
    unshared collator does (`"keep_start"` only: `"keep_end"` cuts a different part of the prompt for each completion,
    so the K rows share no prompt).

    Returns (with `B` prompts, packed length `L`, `K = K_max`, `T` = longest completion of the batch):
        - `input_ids` `(B, L)` long: packed tokens, `pad_token_id` after the row's end.
        - `position_ids` `(B, L)` long: RoPE positions; each branch restarts at `P - 1`; 0 at padding.
        - `segment_ids` `(B, L)` long: 0 for the shared prefix, `k + 1` for the branch of rank `k`, -1 for padding.
        - `shift_labels` `(B, L)` long: the token scored from each position's hidden state, -100 where none is.
        - `padding_mask` `(B, L)` long: 1 on real tokens of the packed row.
        - `unshared_lengths` `(B,)` long: tokens of the K unshared rows `[prompt + completion_k]` (after truncation),
          what TRL's `num_tokens` counts.
        - `completion_positions` `(B, K, T)` long: `[b, k, j]` is the packed position in row `b` whose log-prob is the
          `j`-th token of prompt `b`'s rank-`k` completion; 0 where `completion_mask` is 0.
        - `completion_mask` `(B, K, T)` long: 1 on the completion's tokens, left-aligned (`[b, k].sum()` is the
          completion's length as the unshared `shift_completion_mask` counts it).

    Every tensor leads with the prompt dimension `B`, so a batch sliced along its first dimension stays whole
    (accelerate slices every tensor of a batch by the first one's size when it dispatches an `IterableDataset`).
        - `list_mask` `(B, K)` bool, `scores` `(B, K)` float32 and, when the examples carry them, `ref_logps` `(B, K)`
          float32.

    Example:
    ```python
    >>> batch = pack_shared_prompt(
    ...     [{"prompt_ids": [1, 2], "completion_ids": [[3], [4, 5]], "scores": [0.0, 1.0]}], pad_token_id=0
    ... )
    >>> batch["input_ids"].tolist()  # prefix [1] | rank 1 = [2, 4] scores 4, 5 | rank 2 = [2] scores 3
    [[1, 2, 4, 2]]
    >>> [batch[name].tolist() for name in ("segment_ids", "position_ids", "shift_labels")]
    [[[0, 1, 1, 2]], [[0, 1, 2, 1]], [[-100, 4, 5, 3]]]
    >>> batch["completion_positions"].tolist(), batch["completion_mask"].tolist()
    ([[[1, 2], [3, 0]]], [[[1, 1], [1, 0]]])
    ```
    """
    if truncation_mode != "keep_start" and max_length is not None:
        raise ValueError(
            "The shared-prompt forward supports truncation_mode='keep_start' only: 'keep_end' cuts a different part "
            "of the prompt for each completion, so there is no shared prompt to encode once."
        )
    num_prompts = len(examples)
    has_ref = has_ref_logps(examples[0])
    k_max = max(len(example["completion_ids"]) for example in examples)
    if pad_to_num_completions is not None:
        if pad_to_num_completions < k_max:
            raise ValueError(f"pad_to_num_completions={pad_to_num_completions} is smaller than a list of {k_max}")
        k_max = pad_to_num_completions

    scores = torch.zeros(num_prompts, k_max, dtype=torch.float32)
    list_mask = torch.zeros(num_prompts, k_max, dtype=torch.bool)
    ref_logps = torch.zeros(num_prompts, k_max, dtype=torch.float32) if has_ref else None
    rows = []  # per prompt: (ids, positions, segments, labels)
    unshared_lengths = torch.zeros(num_prompts, dtype=torch.long)  # sum_k len(prompt + completion_k), truncated
    spans = [[(0, 0)] * num_prompts for _ in range(k_max)]  # spans[k][b]: (start in row b, number of scored tokens)
    for b, example in enumerate(examples):
        prompt_ids, example_scores = list(example["prompt_ids"]), example["scores"]
        example_ref_logps = row_ref_logps(example) if has_ref else None
        if max_length is not None:
            prompt_ids = prompt_ids[:max_length]
        shared = max(len(prompt_ids) - 1, 0)  # the prefix every branch attends to
        ids, positions = prompt_ids[:shared], list(range(shared))
        segments, labels = [PREFIX_SEGMENT] * shared, [-100] * shared
        order = sorted(range(len(example_scores)), key=lambda k: -example_scores[k])  # stable, best first
        for rank, k in enumerate(order):
            full = prompt_ids + list(example["completion_ids"][k])
            if max_length is not None:
                full = full[:max_length]
            unshared_lengths[b] += len(full)
            # Branch: the tokens from the last prompt token on, each scoring the next token (labels shifted here)
            branch_ids, branch_labels = full[shared:-1], full[shared + 1 :]
            spans[rank][b] = (len(ids), len(branch_labels))
            ids += branch_ids
            positions += range(shared, shared + len(branch_ids))
            segments += [rank + 1] * len(branch_ids)
            labels += branch_labels
            scores[b, rank] = float(example_scores[k])
            list_mask[b, rank] = True
            if has_ref:
                ref_logps[b, rank] = float(example_ref_logps[k])
        rows.append((ids, positions, segments, labels))

    length = _round_up(max(max(len(row[0]) for row in rows), 1), pad_to_multiple_of)
    input_ids = torch.full((num_prompts, length), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros(num_prompts, length, dtype=torch.long)
    segment_ids = torch.full((num_prompts, length), PAD_SEGMENT, dtype=torch.long)
    shift_labels = torch.full((num_prompts, length), -100, dtype=torch.long)
    padding_mask = torch.zeros(num_prompts, length, dtype=torch.long)
    for b, (ids, positions, segments, labels) in enumerate(rows):
        n = len(ids)
        input_ids[b, :n] = torch.tensor(ids, dtype=torch.long)
        position_ids[b, :n] = torch.tensor(positions, dtype=torch.long)
        segment_ids[b, :n] = torch.tensor(segments, dtype=torch.long)
        shift_labels[b, :n] = torch.tensor(labels, dtype=torch.long)
        padding_mask[b, :n] = 1

    flat_spans = [spans[k][b] for b in range(num_prompts) for k in range(k_max)]  # prompt-major
    longest = max(max(n for _, n in flat_spans), 1)
    offsets = torch.arange(longest)
    starts = torch.tensor([start for start, _ in flat_spans], dtype=torch.long)
    counts = torch.tensor([n for _, n in flat_spans], dtype=torch.long)
    completion_mask = (offsets < counts[:, None]).long().view(num_prompts, k_max, longest)  # (B, K, T)
    completion_positions = (starts[:, None] + offsets).view(num_prompts, k_max, longest) * completion_mask

    output = {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "segment_ids": segment_ids,
        "shift_labels": shift_labels,
        "padding_mask": padding_mask,
        "unshared_lengths": unshared_lengths,
        "completion_positions": completion_positions,
        "completion_mask": completion_mask,
        "list_mask": list_mask,
        "scores": scores,
    }
    if has_ref:
        output["ref_logps"] = ref_logps
    return output


@dataclass
class DataCollatorForSharedPromptRankedPreference(DataCollatorForRankedPreference):
    """
    Collates tokenised ranked lists into one packed row per prompt, for [`trl_rankalign.forward.listwise_forward`].

    The shared-prompt counterpart of [`DataCollatorForRankedPreference`], with the same arguments and the same sorting,
    `list_mask`, `scores` and `ref_logps`; the sequence tensors are those of [`pack_shared_prompt`] (which documents
    every shape). Only `truncation_mode="keep_start"` is supported.

    The arguments are [`DataCollatorForRankedPreference`]'s; `max_length` truncates each prompt + completion (its
    end), as the unshared collator does, so both forwards score the same tokens.
    """

    def __post_init__(self):
        super().__post_init__()
        if self.truncation_mode == "keep_end" and self.max_length is not None:
            raise ValueError("The shared-prompt forward supports truncation_mode='keep_start' only.")

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return pack_shared_prompt(
            examples,
            pad_token_id=self.pad_token_id,
            max_length=self.max_length,
            truncation_mode=self.truncation_mode,
            pad_to_multiple_of=self.pad_to_multiple_of,
            pad_to_num_completions=self.pad_to_num_completions,
        )
