"""The shared-prompt forward: encode each prompt once for its K completions.

The default forward (`RankedPreferenceTrainer._compute_loss`) runs `K * B` rows `[prompt + completion_k]`, so every
prompt is encoded K times. Here each prompt is one packed row and its K completions are branches of it:

```
row b:   [ p_0 … p_{P-2} | p_{P-1} y_1[0] … y_1[L_1-2] | p_{P-1} y_2[0] … y_2[L_2-2] | … | pad … ]
segment:   0 …  0        | 1       1      …  1         | 2       2      …  2         | … | -1 …
position:  0 …  P-2      | P-1     P      …  P+L_1-2   | P-1     P      …  P+L_2-2   | … | 0 …
label:    -100 … -100    | y_1[0]  y_1[1] …  y_1[L_1-1]| y_2[0]  y_2[1] …  y_2[L_2-1]| … | -100 …
```

A branch attends to the shared prefix (segment 0) and causally to itself, never to another branch; its positions
continue from the prefix as if it followed the prompt alone. So every hidden state of branch k is the one the
unshared row `[prompt + y_k]` computes at the same position, and its per-token log-probs are the same up to float
summation order (the 4-D mask adds exact zeros for the keys it hides).

Why each branch starts with a copy of the last prompt token: under the causal-LM shift, `y_k[0]` is scored from the
hidden state of the last prompt token, and that one hidden state would have to score K different labels, which one
label per position (even TRL's pre-shifted `shift_labels`) cannot express. The last prompt token is therefore moved out
of the prefix into each branch (same token, same position `P-1`, same keys before it, hence the same hidden state),
and the branch's own last token is dropped: it predicts nothing. A branch is exactly `L_k` tokens long and the packed
row holds `P - 1 + sum_k L_k` tokens (instead of `K * P + sum_k L_k`). The forward then passes `shift_labels` to
TRL's fused LM head (`add_fused_lm_head`), which scores the hidden state at every position against the label at that
position without shifting. A prompt of 0 tokens has no token to copy: the branch is `y_k[:-1]` scoring `y_k[1:]`,
exactly what the unshared row scores (its first completion token is never predicted either).

Attention masks: transformers 5 (`masking_utils._preprocess_mask_arguments`) uses a 4-D `attention_mask` as given,
skipping its own causal/padding mask. `sdpa` takes a boolean mask (True = attend); `eager` adds the mask to the scores,
so it needs an additive float mask (0 / dtype min). Flash-attention kernels take no dense mask and are refused. A dense
mask also means SDPA cannot use its flash or `is_causal` fast paths. Models with sliding-window layers get a mapping
`{"full_attention": mask, "sliding_attention": mask & window}` (the form their backbones accept), the window measured
in position ids, which is what the unshared row's window measures. Padding tokens attend to themselves (and the
prefix), so no softmax row is empty (an empty row is NaN under SDPA and would leak into the backward).

The batch stays compact (`segment_ids`, `position_ids`): the `(B, 1, L, L)` mask is built on the model's device by
[`shared_prompt_attention_mask`] inside [`shared_prompt_logps`], not carried through the data loader.
"""

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from .data.collator import DataCollatorForRankedPreference


__all__ = [
    "PAD_SEGMENT",
    "PREFIX_SEGMENT",
    "DataCollatorForSharedPromptRankedPreference",
    "SharedPromptLogps",
    "pack_shared_prompt",
    "shared_prompt_attention_mask",
    "shared_prompt_logps",
    "shared_prompt_model_inputs",
]

PREFIX_SEGMENT = 0  # the prompt shared by every branch of a row
PAD_SEGMENT = -1  # padding at the end of a packed row; branch k (0-based rank) is segment k + 1

_DENSE_MASK_IMPLEMENTATIONS = ("sdpa", "eager")


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
        - `padding_mask` `(B, L)` long: 1 on real tokens (what `attention_mask.sum()` counts in the unshared batch).
        - `completion_positions` `(K * B, T)` long: completion-major like the unshared batch (row `k * B + b` is prompt
          `b`'s rank-`k` completion): the packed position in row `b` whose log-prob is that completion's `j`-th token;
          0 where `completion_mask` is 0.
        - `completion_mask` `(K * B, T)` long: 1 on the completion's tokens, left-aligned (its row sum is the
          completion's length as the unshared `shift_completion_mask` counts it).
        - `list_mask` `(B, K)` bool, `scores` `(B, K)` float32 and, when the examples carry them, `ref_logps` `(B, K)`
          float32.

    Example:
    ```python
    >>> batch = pack_shared_prompt(
    ...     [{"prompt_ids": [1, 2], "completion_ids": [[3], [4, 5]], "scores": [0.0, 1.0]}], pad_token_id=0
    ... )
    >>> batch["input_ids"]  # prefix [1] | rank 1 = [2, 4] scores 4, 5 | rank 2 = [2] scores 3
    tensor([[1, 2, 4, 2]])
    >>> batch["segment_ids"], batch["position_ids"], batch["shift_labels"]
    (tensor([[0, 1, 1, 2]]), tensor([[0, 1, 2, 1]]), tensor([[-100, 4, 5, 3]]))
    >>> batch["completion_positions"], batch["completion_mask"]
    (tensor([[1, 2], [3, 0]]), tensor([[1, 1], [1, 0]]))
    ```
    """
    if truncation_mode != "keep_start" and max_length is not None:
        raise ValueError(
            "The shared-prompt forward supports truncation_mode='keep_start' only: 'keep_end' cuts a different part "
            "of the prompt for each completion, so there is no shared prompt to encode once."
        )
    num_prompts = len(examples)
    has_ref = "ref_logps" in examples[0]
    k_max = max(len(example["completion_ids"]) for example in examples)
    if pad_to_num_completions is not None:
        if pad_to_num_completions < k_max:
            raise ValueError(f"pad_to_num_completions={pad_to_num_completions} is smaller than a list of {k_max}")
        k_max = pad_to_num_completions

    scores = torch.zeros(num_prompts, k_max, dtype=torch.float32)
    list_mask = torch.zeros(num_prompts, k_max, dtype=torch.bool)
    ref_logps = torch.zeros(num_prompts, k_max, dtype=torch.float32) if has_ref else None
    rows = []  # per prompt: (ids, positions, segments, labels)
    spans = [[(0, 0)] * num_prompts for _ in range(k_max)]  # spans[k][b]: (start in row b, number of scored tokens)
    for b, example in enumerate(examples):
        prompt_ids, example_scores = list(example["prompt_ids"]), example["scores"]
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
                ref_logps[b, rank] = float(example["ref_logps"][k])
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

    flat_spans = [span for rank_spans in spans for span in rank_spans]  # completion-major
    longest = max(max(n for _, n in flat_spans), 1)
    offsets = torch.arange(longest)
    starts = torch.tensor([start for start, _ in flat_spans], dtype=torch.long)
    counts = torch.tensor([n for _, n in flat_spans], dtype=torch.long)
    completion_mask = (offsets < counts[:, None]).long()  # (K * B, T)
    completion_positions = (starts[:, None] + offsets) * completion_mask  # (K * B, T)

    output = {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "segment_ids": segment_ids,
        "shift_labels": shift_labels,
        "padding_mask": padding_mask,
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
    Collates tokenised ranked lists into one packed row per prompt, for [`shared_prompt_logps`].

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


def _unwrap(model):
    """The model under DDP/DeepSpeed wrappers (`.module`); PEFT models forward `.config` and the embeddings already."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def shared_prompt_attention_mask(
    segment_ids: torch.Tensor,
    position_ids: torch.Tensor,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """
    The 4-D mask of packed rows: query `i` sees key `j <= i` of the shared prefix or of its own segment.

    Args:
        segment_ids: `(B, L)` from [`pack_shared_prompt`] (0 prefix, `k + 1` branch, -1 padding).
        position_ids: `(B, L)`; used only with `sliding_window` (keys with `pos_i - pos_j >= sliding_window` hidden).
        attn_implementation: `"sdpa"` gives a boolean mask (True = attend); `"eager"` an additive `dtype` mask
            (0 where attended, `torch.finfo(dtype).min` elsewhere), as `eager_attention_forward` adds it to the scores.
        dtype: Dtype of the additive mask (the attention scores' dtype).
        sliding_window: Restrict each query to keys less than this many positions back.

    Returns:
        `(B, 1, L, L)` mask. Every query sees at least itself, so no softmax row is empty.
    """
    if attn_implementation not in _DENSE_MASK_IMPLEMENTATIONS:
        raise ValueError(
            f"The shared-prompt forward needs a dense 4-D attention mask, which attn_implementation="
            f"{attn_implementation!r} does not take; use 'sdpa' or 'eager'."
        )
    length = segment_ids.size(1)
    index = torch.arange(length, device=segment_ids.device)
    causal = index[None, :] <= index[:, None]  # (L, L): key j <= query i
    query_segment, key_segment = segment_ids[:, :, None], segment_ids[:, None, :]  # (B, L, 1), (B, 1, L)
    allowed = causal & ((key_segment == PREFIX_SEGMENT) | (key_segment == query_segment))  # (B, L, L)
    if sliding_window is not None:
        allowed = allowed & (position_ids[:, :, None] - position_ids[:, None, :] < sliding_window)
    allowed = allowed[:, None]  # (B, 1, L, L)
    if attn_implementation == "sdpa":
        return allowed
    zero = torch.zeros((), dtype=dtype, device=segment_ids.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def shared_prompt_model_inputs(model, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """
    `input_ids`, `attention_mask` and `position_ids` of the packed rows, ready for any forward of `model`.

    The mask is [`shared_prompt_attention_mask`] for the model's attention implementation, in the dtype of its input
    embeddings; for models with sliding-window layers it is the mapping `{"full_attention": ..., "sliding_attention":
    ...}` their backbones accept in place of a mask.

    Args:
        model: The causal LM (possibly wrapped: PEFT, DDP, DeepSpeed).
        batch: `input_ids`, `position_ids` and `segment_ids` `(B, L)` from [`pack_shared_prompt`].
    """
    unwrapped = _unwrap(model)
    config = unwrapped.config.get_text_config()
    implementation = config._attn_implementation or "eager"
    dtype = unwrapped.get_input_embeddings().weight.dtype
    segment_ids, position_ids = batch["segment_ids"], batch["position_ids"]
    mask = shared_prompt_attention_mask(segment_ids, position_ids, implementation, dtype)
    layer_types = getattr(config, "layer_types", None) or []
    if "sliding_attention" in layer_types:
        if any(layer_type not in ("full_attention", "sliding_attention") for layer_type in layer_types):
            raise ValueError(f"The shared-prompt forward does not support layer types {sorted(set(layer_types))}.")
        sliding = shared_prompt_attention_mask(segment_ids, position_ids, implementation, dtype, config.sliding_window)
        mask = {"full_attention": mask, "sliding_attention": sliding}
    return {"input_ids": batch["input_ids"], "attention_mask": mask, "position_ids": position_ids}


class SharedPromptLogps(NamedTuple):
    """What [`shared_prompt_logps`] returns. `K * B` rows are completion-major, as in the unshared batch."""

    logps: torch.Tensor
    """`(B, K)` summed completion log-probs (0 at empty slots)."""
    per_token_logps: torch.Tensor
    """`(K * B, T)` per-token log-probs, left-aligned, 0 outside `completion_mask`."""
    completion_mask: torch.Tensor
    """`(K * B, T)` 1 on completion tokens (the unshared `shift_completion_mask`, left-aligned)."""
    entropy: torch.Tensor | None
    """`(K * B, T)` per-token entropy when the fused head computes it (else None), 0 outside `completion_mask`."""
    outputs: Any
    """The model's [`FusedCausalLMOutput`] over the packed rows (`(B, L)` fields)."""


def shared_prompt_logps(model, batch: dict[str, torch.Tensor], **model_kwargs) -> SharedPromptLogps:
    """
    One forward of the packed rows of [`pack_shared_prompt`] through TRL's fused LM head.

    `model` must carry `add_fused_lm_head` (added to the base model before PEFT wrapping, as `DPOTrainer` does) and
    use `attn_implementation="sdpa"` or `"eager"`. Gradient checkpointing and PEFT adapters (LoRA and other
    weight-level adapters; not prompt learning, whose virtual tokens the packed mask does not cover) work unchanged.
    Extra `model_kwargs` go to the model. The MoE router auxiliary loss is refused: TRL's fused head passes the
    `attention_mask` to `load_balancing_loss_func`, which expects 2-D padding.

    Args:
        model: Causal LM with the fused LM head, possibly wrapped (PEFT, DDP).
        batch: `input_ids`, `position_ids`, `segment_ids`, `shift_labels`, `completion_positions`, `completion_mask`
            and `list_mask` as [`pack_shared_prompt`] returns them (on the model's device).

    Returns:
        [`SharedPromptLogps`]: `logps (B, K)`, `per_token_logps (K * B, T)`, `completion_mask (K * B, T)`,
        `entropy (K * B, T)` or None, and the raw `outputs`. Row `k * B + b` is prompt `b`'s rank-`k` completion, so
        `per_token_logps[:B]` are the top-ranked completions and `completion_mask.sum(1).view(K, B).T` the lengths.
    """
    config = _unwrap(model).config.get_text_config()
    if model_kwargs.get("output_router_logits") or getattr(config, "output_router_logits", False):
        # TRL's fused head passes `attention_mask` to `load_balancing_loss_func`, which reads it as 2-D padding
        raise ValueError("The shared-prompt forward does not support the MoE router auxiliary loss.")
    batch_size, num_completions = batch["list_mask"].shape
    outputs = model(
        **shared_prompt_model_inputs(model, batch),
        shift_labels=batch["shift_labels"],
        fused_lm_head=True,
        use_cache=False,
        **model_kwargs,
    )
    completion_positions, completion_mask = batch["completion_positions"], batch["completion_mask"]
    rows = torch.arange(num_completions * batch_size, device=completion_mask.device) % batch_size  # (K * B,)
    valid = completion_mask.bool()

    def unpack(packed: torch.Tensor | None) -> torch.Tensor | None:
        if packed is None:
            return None
        per_token = packed[rows[:, None], completion_positions]  # (K * B, T)
        return per_token.masked_fill(~valid, 0.0)

    per_token_logps = unpack(outputs.log_probs)
    logps = per_token_logps.sum(dim=1).view(num_completions, batch_size).T  # (B, K)
    return SharedPromptLogps(logps, per_token_logps, completion_mask, unpack(outputs.entropy), outputs)
