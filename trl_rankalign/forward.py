"""The listwise forward: per-completion log-probs of a ranked batch, from K rows per prompt or one packed row.

[`listwise_forward`] is the one forward the trainers call (policy and, through [`ReferenceForward`], reference). The
default batch holds `K * B` rows `[prompt + completion_k]`, so every prompt is encoded K times. The shared-prompt
batch ([`trl_rankalign.data.shared_prompt_collator`]) encodes each prompt once: one packed row per prompt, its K
completions as branches of it:

```
row b:   [ p_0 … p_{P-2} | p_{P-1} y_1[0] … y_1[L_1-2] | p_{P-1} y_2[0] … y_2[L_2-2] | … | pad … ]
segment:   0 …  0        | 1       1      …  1         | 2       2      …  2         | … | -1 …
position:  0 …  P-2      | P-1     P      …  P+L_1-2   | P-1     P      …  P+L_2-2   | … | 0 …
label:    -100 … -100    | y_1[0]  y_1[1] …  y_1[L_1-1]| y_2[0]  y_2[1] …  y_2[L_2-1]| … | -100 …
```

A branch attends to the shared prefix (segment 0) and causally to itself, never to another branch; its positions
continue from the prefix as if it followed the prompt alone. So every hidden state of branch k is the one the
unshared row `[prompt + y_k]` computes at the same position, and its per-token log-probs are the same up to float
summation order.

Why each branch starts with a copy of the last prompt token: under the causal-LM shift, `y_k[0]` is scored from the
hidden state of the last prompt token, and that one hidden state would have to score K different labels, which one
label per position (even TRL's pre-shifted `shift_labels`) cannot express. The last prompt token is therefore moved out
of the prefix into each branch (same token, same position `P-1`, same keys before it, hence the same hidden state),
and the branch's own last token is dropped: it predicts nothing. A branch is exactly `L_k` tokens long and the packed
row holds `P - 1 + sum_k L_k` tokens (instead of `K * P + sum_k L_k`). The forward then passes `shift_labels` to
TRL's fused LM head (`add_fused_lm_head`), which scores the hidden state at every position against the label at that
position without shifting. A prompt of 0 tokens has no token to copy: the branch is `y_k[:-1]` scoring `y_k[1:]`,
exactly what the unshared row scores (its first completion token is never predicted either).

Attention: the packed row is never masked densely. [`trl_rankalign.shared_prompt_attention`] registers an attention
function with transformers' attention interface that splits the attention by structure (the prefix causally among
itself; each branch over [prefix ; itself, causally]) from a [`SharedPromptLayout`] built once per forward from
`segment_ids` and `position_ids` and passed down to every layer as the keyword argument `shared_prompt_layout`. The
model is switched to that function (over its own sdpa, eager, flex or flash implementation) when a trainer enables the
shared path, or here on its first shared-prompt batch, and stays switched: its unshared calls still run its own
implementation (flash excepted, see that module). Sliding windows come from the
`sliding_window` each attention module passes (config-level or per layer), measured in position ids as the unshared
row's mask measures them. The batch stays compact: nothing of size `(P + sum_k L_k)^2` is built.
"""

from types import SimpleNamespace
from typing import NamedTuple

import torch

from .shared_prompt_attention import (
    SharedPromptLayout,
    enable_shared_prompt_attention,
    shared_prompt_attention_support,
)


__all__ = [
    "ListwiseForward",
    "ReferenceForward",
    "listwise_forward",
    "reference_inputs",
    "shared_prompt_support",
]


def _unwrap(model):
    """The model under DDP/DeepSpeed wrappers (`.module`); PEFT models forward `.config` and the embeddings already."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


# ------------------------------------------------------------------------------------------------- the one forward
def shared_prompt_support(model) -> list[str]:
    """Why the shared-prompt forward cannot run `model` exactly (empty when it can); see
    [`shared_prompt_attention_support`]."""
    return shared_prompt_attention_support(_unwrap(model))


class ListwiseForward(NamedTuple):
    """What one forward of a ranked batch gives the trainer. `K * B` rows are completion-major (row `k * B + b` is
    prompt `b`'s rank-`k` completion), as in the unshared batch; `T` is the batch's completion length."""

    logps: torch.Tensor
    """`(B, K)` summed completion log-probs (0 at empty slots)."""
    per_token_logps: torch.Tensor
    """`(K * B, T)` per-token log-probs, 0 outside `completion_mask`."""
    completion_mask: torch.Tensor
    """`(K * B, T)` 1 on scored completion tokens (TRL's `shift_completion_mask`)."""
    entropy: torch.Tensor | None
    """`(K * B, T)` per-token entropy of the policy, when its fused head computes it."""
    mean_logits: torch.Tensor | None
    """`(K * B, T)` mean over the vocabulary of each position's logits (TRL's `logits/*` metrics)."""
    is_top1: torch.Tensor | None
    """`(K * B, T)` bool: the label is the arg-max token (TRL's `mean_token_accuracy`)."""
    aux_loss: torch.Tensor | None
    """The MoE router auxiliary loss, when requested."""
    num_tokens: torch.Tensor
    """Scalar: tokens of the rows `[prompt + completion_k]` of the valid slots, as TRL's `num_tokens` counts them
    (the same count whether or not the prompt is shared)."""


def listwise_forward(model, batch: dict[str, torch.Tensor], output_router_logits: bool = False) -> ListwiseForward:
    """
    Per-completion log-probs of a collated ranked batch through TRL's fused LM head (`fused_lm_head=True`, so the
    full-vocabulary logits are never materialised), whichever collator built it: K rows per prompt
    ([`DataCollatorForRankedPreference`]) or one packed row per prompt
    ([`DataCollatorForSharedPromptRankedPreference`], recognised by its `segment_ids`). The trainer never needs to
    know which.

    Args:
        model: The causal LM with TRL's fused head (`add_fused_lm_head`), possibly wrapped (PEFT, DDP, DeepSpeed).
        batch: The collated batch, on the model's device.
        output_router_logits: Ask an MoE model for its router auxiliary loss (unshared rows only).
    """
    if "segment_ids" in batch:
        if output_router_logits:
            # TRL's fused head passes `attention_mask` to `load_balancing_loss_func`, which reads it as 2-D padding
            raise ValueError("The shared-prompt forward does not support the MoE router auxiliary loss.")
        return _shared_prompt_forward(model, batch)

    batch_size, num_completions = batch["list_mask"].shape
    completion_mask = batch["completion_mask"]
    labels = batch["input_ids"].masked_fill(completion_mask == 0, -100)
    extra = {"output_router_logits": True} if output_router_logits else {}
    outputs = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=labels,
        fused_lm_head=True,
        use_cache=False,
        **extra,
    )
    shift_completion_mask = completion_mask[:, 1:]
    seq_len = shift_completion_mask.size(1)

    def real_positions(values: torch.Tensor | None) -> torch.Tensor | None:
        # Prompt-learning PEFT prepends virtual tokens to the outputs; keep the positions of the real tokens
        return None if values is None else values[:, -seq_len:]

    per_token_logps = real_positions(outputs.log_probs)  # (K * B, L - 1)
    logps = per_token_logps.sum(dim=1).view(num_completions, batch_size).T  # (B, K)
    valid_rows = batch["list_mask"].T.reshape(-1)  # (K * B,) completion-major
    num_tokens = batch["attention_mask"].sum(dim=1)[valid_rows].sum()
    return ListwiseForward(
        logps=logps,
        per_token_logps=per_token_logps,
        completion_mask=shift_completion_mask,
        entropy=real_positions(getattr(outputs, "entropy", None)),
        mean_logits=real_positions(getattr(outputs, "mean_logits", None)),
        is_top1=real_positions(getattr(outputs, "is_top1", None)),
        aux_loss=getattr(outputs, "aux_loss", None) if output_router_logits else None,
        num_tokens=num_tokens,
    )


def _shared_prompt_forward(model, batch: dict[str, torch.Tensor]) -> ListwiseForward:
    """One forward of the packed rows of [`pack_shared_prompt`] through the shared-prompt attention; per-position values
    are unpacked to the unshared `(K * B, T)` layout with `completion_positions`."""
    batch_size, num_completions = batch["list_mask"].shape
    enable_shared_prompt_attention(_unwrap(model))
    input_ids, position_ids = batch["input_ids"], batch["position_ids"]
    layout = SharedPromptLayout(batch["segment_ids"], position_ids)
    # An empty 4-D mask: transformers' mask creation returns a 4-D mask as is, so it builds none; the attention reads
    # the layout instead (and any other attention function would fail on it loudly rather than attend wrongly)
    no_mask = torch.ones(input_ids.size(0), 1, 0, 0, dtype=torch.bool, device=input_ids.device)
    outputs = model(
        input_ids=input_ids,
        attention_mask=no_mask,
        position_ids=position_ids,
        shift_labels=batch["shift_labels"],
        fused_lm_head=True,
        use_cache=False,
        shared_prompt_layout=layout,
    )
    if layout.calls == 0:
        raise RuntimeError(
            f"{type(_unwrap(model)).__name__} never called the shared-prompt attention: its layers do not go through "
            "transformers' attention interface, so the packed rows would attend across completions."
        )
    completion_positions, completion_mask = batch["completion_positions"], batch["completion_mask"]
    rows = torch.arange(num_completions * batch_size, device=completion_mask.device) % batch_size  # (K * B,)
    valid = completion_mask.bool()

    def unpack(packed: torch.Tensor | None) -> torch.Tensor | None:
        if packed is None:
            return None
        per_token = packed[rows[:, None], completion_positions]  # (K * B, T)
        return per_token.masked_fill(~valid, 0)

    per_token_logps = unpack(outputs.log_probs)
    logps = per_token_logps.sum(dim=1).view(num_completions, batch_size).T  # (B, K)
    return ListwiseForward(
        logps=logps,
        per_token_logps=per_token_logps,
        completion_mask=completion_mask,
        entropy=unpack(getattr(outputs, "entropy", None)),
        mean_logits=unpack(getattr(outputs, "mean_logits", None)),
        is_top1=unpack(getattr(outputs, "is_top1", None)),
        aux_loss=None,
        num_tokens=batch["unshared_lengths"].sum(),
    )


class ReferenceForward(torch.nn.Module):
    """
    The listwise forward of one batch, shaped as the model call that `DPOTrainer.compute_ref_log_probs` makes.

    TRL 1.16's `DPOTrainer.compute_ref_log_probs(model, inputs)` is the one place that knows how the reference is run
    (no grad, gradient checkpointing off, the PEFT adapter disabled or the `"ref"` adapter on, autocast). It calls
    `model(**inputs, labels=..., fused_lm_head=True).log_probs`, sums dim 1 and splits the rows into two halves. This
    adapter is that `model` for a ranked batch: its `log_probs` are the `(K * B, 1)` completion log-probs of
    [`listwise_forward`], so TRL's sum is the identity and concatenating its halves gives them back.
    [`reference_inputs`] is the matching `inputs`. Tested against the unshared, shared-prompt and PEFT references
    (tests/test_rank_dpo_trainer.py), so a change of TRL's method under it fails there.
    """

    def __init__(self, model, batch: dict[str, torch.Tensor]):
        super().__init__()
        self.model, self.batch = model, batch

    def forward(self, **_trl_model_kwargs) -> SimpleNamespace:
        logps = listwise_forward(self.model, self.batch).logps  # (B, K)
        return SimpleNamespace(log_probs=logps.T.reshape(-1, 1))  # (K * B, 1), completion-major


def reference_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `inputs` that go with [`ReferenceForward`]: one placeholder token per completion, no completion tokens."""
    num_rows = batch["list_mask"].numel()
    placeholder = torch.zeros(num_rows, 1, dtype=torch.long, device=batch["list_mask"].device)
    return {"input_ids": placeholder, "completion_mask": placeholder}
