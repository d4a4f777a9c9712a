"""The listwise forward: per-completion log-probs of a ranked batch, from K rows per prompt or one packed row.

[`listwise_forward`] is the one forward the trainers call (policy and reference, under the trainer's reference
context). The default batch holds `K * B` rows `[prompt + completion_k]`, so every prompt is encoded K times. The
shared-prompt batch ([`trl_rankalign.data.shared_prompt_collator`]) encodes each prompt once: one packed row per
prompt, its K completions as branches of it:

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
TRL's fused LM head (`add_fused_lm_head`), which scores each hidden state against the label at its position without
shifting. A prompt of 0 tokens has no token to copy: the branch is `y_k[:-1]` scoring `y_k[1:]`,
exactly what the unshared row scores (its first completion token is never predicted either).

Attention: the packed row is never masked densely. [`trl_rankalign.shared_prompt_attention`] registers an attention
function with transformers' attention interface that splits the attention by structure (the prefix causally among
itself; each branch over [prefix ; itself, causally]) from a [`SharedPromptLayout`] built once per forward from
`segment_ids` and `position_ids` and passed down to every layer as the keyword argument `shared_prompt_layout`. The
model is switched to that function (over its own sdpa, eager, flex or flash implementation) for as long as a trainer
runs `train`/`evaluate`/`predict`, or here for one forward when it is not switched already, and set back to its own
implementation afterwards ([`shared_prompt_attention_enabled`]): nothing stays on the user's model. Sliding windows come from the
`sliding_window` each attention module passes (config-level or per layer), measured in position ids as the unshared
row's mask measures them. The batch stays compact: nothing of size `(P + sum_k L_k)^2` is built.
"""

from contextlib import contextmanager
from functools import partial
from typing import NamedTuple

import torch

from .shared_prompt_attention import (
    SharedPromptLayout,
    is_shared_prompt_attention_on,
    layout_sentinel_mask,
    shared_prompt_attention_enabled,
    shared_prompt_attention_support,
)


__all__ = [
    "ListwiseForward",
    "listwise_forward",
    "scored_positions",
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
    full-vocabulary logits are never materialised), which is handed the completion tokens' hidden states only
    ([`scored_positions`]: TRL's head scores every position on CPU, prompt included), whichever collator built it: K rows per prompt
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
    input_ids, completion_mask = batch["input_ids"], batch["completion_mask"]
    num_rows, length = input_ids.shape
    # Position t scores token t + 1 (the causal shift); the LM head scores only the completion tokens
    shift_completion_mask = completion_mask[:, 1:]
    valid = shift_completion_mask.bool()  # (K * B, L - 1)
    positions = torch.arange(num_rows * length, device=input_ids.device).view(num_rows, length)
    scored = positions[:, :-1][valid]  # (M,) flat positions
    extra = {"output_router_logits": True} if output_router_logits else {}
    with scored_positions(model, scored, length) as hook:
        outputs = model(
            input_ids=input_ids,
            attention_mask=batch["attention_mask"],
            shift_labels=input_ids[:, 1:][valid][None],  # (1, M)
            fused_lm_head=True,
            use_cache=False,
            **extra,
        )
    hook.check(outputs.log_probs)
    unpack = partial(_unpack_scored, valid=valid)  # (1, M) -> (K * B, L - 1)

    per_token_logps = unpack(outputs.log_probs)  # (K * B, L - 1)
    logps = per_token_logps.sum(dim=1).view(num_completions, batch_size).T  # (B, K)
    valid_rows = batch["list_mask"].T.reshape(-1)  # (K * B,) completion-major
    num_tokens = batch["attention_mask"].sum(dim=1)[valid_rows].sum()
    return ListwiseForward(
        logps=logps,
        per_token_logps=per_token_logps,
        completion_mask=shift_completion_mask,
        entropy=unpack(getattr(outputs, "entropy", None)),
        mean_logits=unpack(getattr(outputs, "mean_logits", None)),
        is_top1=unpack(getattr(outputs, "is_top1", None)),
        aux_loss=getattr(outputs, "aux_loss", None) if output_router_logits else None,
        num_tokens=num_tokens,
    )


def _shared_prompt_forward(model, batch: dict[str, torch.Tensor]) -> ListwiseForward:
    """One forward of the packed rows of [`pack_shared_prompt`] through the shared-prompt attention; per-position values
    are unpacked to the unshared `(K * B, T)` layout with `completion_positions`."""
    batch_size, num_completions = batch["list_mask"].shape
    inner = _unwrap(model)
    if is_shared_prompt_attention_on(inner):  # a trainer holds the switch (through the backward)
        return _packed_forward(model, batch, batch_size, num_completions)
    base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    if torch.is_grad_enabled() and base.training and getattr(base, "is_gradient_checkpointing", False):
        raise RuntimeError(
            "With gradient checkpointing, the backward recomputes the layers after this forward returns: run it "
            "inside `with trl_rankalign.shared_prompt_attention.shared_prompt_attention_enabled(model):` (through the "
            "backward), as the trainers do."
        )
    with shared_prompt_attention_enabled(inner):  # one forward; the model's own attention is set back after it
        return _packed_forward(model, batch, batch_size, num_completions)


def _packed_forward(model, batch, batch_size: int, num_completions: int) -> ListwiseForward:
    input_ids, position_ids = batch["input_ids"], batch["position_ids"]
    layout = SharedPromptLayout(batch["segment_ids"], position_ids)
    no_mask = layout_sentinel_mask(input_ids.size(0), input_ids.device)  # the attention reads the layout instead
    # (B, K, T) -> (K * B, T), completion-major like the unshared rows (row k * B + b: prompt b's rank-k completion)
    completion_positions, completion_mask = (
        batch[name].transpose(0, 1).flatten(0, 1) for name in ("completion_positions", "completion_mask")
    )
    rows = torch.arange(num_completions * batch_size, device=completion_mask.device) % batch_size  # (K * B,)
    valid = completion_mask.bool()
    # The LM head scores only the completion tokens, in the order of `valid` (the prefix predicts nothing)
    scored = (rows[:, None] * input_ids.size(1) + completion_positions)[valid]  # (M,) flat packed positions
    with scored_positions(model, scored, input_ids.size(1)) as hook:
        outputs = model(
            input_ids=input_ids,
            attention_mask=no_mask,
            position_ids=position_ids,
            shift_labels=batch["shift_labels"].reshape(-1)[scored][None],  # (1, M)
            fused_lm_head=True,
            use_cache=False,
            shared_prompt_layout=layout,
        )
    if layout.calls == 0:
        raise RuntimeError(
            f"{type(_unwrap(model)).__name__} never called the shared-prompt attention: its layers do not go through "
            "transformers' attention interface, so the packed rows would attend across completions."
        )
    hook.check(outputs.log_probs)
    unpack = partial(_unpack_scored, valid=valid)  # (1, M) -> (K * B, T)

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


def _unpack_scored(scored_values: torch.Tensor | None, valid: torch.Tensor) -> torch.Tensor | None:
    """The `(1, M)` values of the scored positions back in place: `valid.shape`, 0 where `valid` is False."""
    if scored_values is None:
        return None
    return scored_values.new_zeros(valid.shape).masked_scatter(valid, scored_values[0])


class _ScoredPositions:
    """What [`scored_positions`] saw: the backbone calls it reshaped and the number of rows it kept."""

    def __init__(self, num_rows: int):
        self.num_rows, self.calls = num_rows, 0

    def check(self, log_probs: torch.Tensor) -> None:
        """Fail loudly when the fused head did not score exactly the kept rows (TRL changed how it reads them)."""
        if self.calls != 1 or tuple(log_probs.shape) != (1, self.num_rows):
            raise RuntimeError(
                "TRL's fused LM head no longer scores the backbone's `last_hidden_state` row for row "
                f"(backbone calls seen: {self.calls}, log-probs {tuple(log_probs.shape)}, expected (1, "
                f"{self.num_rows})): trl_rankalign.forward.scored_positions needs updating for this TRL version."
            )


@contextmanager
def scored_positions(model, flat_positions: torch.Tensor, length: int):
    """
    For one forward of `model` on `(B, length)` inputs, keep only the hidden states at `flat_positions` `(M,)` of the
    flattened `(B * length)` positions: the backbone's `last_hidden_state` `(B, length, H)` becomes `(1, M, H)`, so
    TRL's fused LM head (which scores every position of `last_hidden_state` against `shift_labels` on CPU, and masks
    them on GPU) projects and scores just those rows; pass `shift_labels` `(1, M)` to match. Positions count from the
    first real token: virtual tokens that prompt-learning PEFT prepends to the hidden states are skipped.

    This is the one place that relies on how `trl.trainer.utils.add_fused_lm_head` reads the backbone (through a
    public PyTorch forward hook on the model's `base_model`, removed on exit). The yielded object's `check(log_probs)`
    raises when TRL reads it differently; the shared-prompt exactness tests run through it.
    """
    backbone = _unwrap(model)
    backbone = (backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone).base_model
    seen = _ScoredPositions(int(flat_positions.numel()))

    def keep_scored_rows(module, args, output):
        seen.calls += 1
        hidden = output.last_hidden_state[:, -length:]  # (B, length, H)
        output.last_hidden_state = hidden.reshape(-1, hidden.size(-1)).index_select(0, flat_positions)[None]
        return output

    handle = backbone.register_forward_hook(keep_scored_rows)
    try:
        yield seen
    finally:
        handle.remove()
