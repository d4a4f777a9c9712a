"""Shared-prompt attention: a prompt's K completions read its keys/values, through transformers' attention interface.

The packed row of [`pack_shared_prompt`] holds one prompt and its K completions as branches:

```
row b:    [ prefix (S_b tokens) | branch 1 (L_1) | branch 2 (L_2) | … | padding ]
attention:  causal in itself    | [prefix ; itself, causal]      each branch never sees another
```

Instead of masking a `(S + ΣL)²` score matrix, the attention is split by structure (the decomposition of Prefix
Grouper, arXiv 2506.05433, and of li-plus's flash-preference):

- the prefix queries attend causally to the prefix keys/values: one causal call over the first `S = max_b S_b` positions
  of every row (SDPA's `is_causal` fast path; a shorter prefix just computes a few discarded rows);
- the queries of branch n (row b) attend to `[prefix keys of row b ; own keys, causal]`: all branches of the batch in
  one call of `N` sequences, queries `(N, H, L_max)`, keys `(N, H_kv, S + L_max)`, with the small `(L_max, S + L_max)`
  mask of each branch (prefix keys `< S_b`, own keys causal).

Nothing of size `(S + ΣL)²` is built; the prefix keys/values are gathered once per branch (`N · S` rows of `H_kv · D`),
and their gradients add up from every branch through the gather's backward (no custom backward). With
flash-attention (varlen) the same split is one kernel call: the prefix is a sequence, each branch a sequence whose keys
are `[prefix ; branch]`, causal bottom-right aligned (as TRL's async GRPO tree attention). With FlexAttention the packed
row runs as is, under a block mask of the same structure, so empty blocks are skipped and nothing is copied.

Sliding windows are honoured from the `sliding_window` argument the model's attention module passes for each layer
(config-level windows of Mistral and Phi3, per-layer windows of Qwen2 and Gemma 2/3), measured in positions as the
unshared row's mask measures them: key `j` is visible to query `i` when `0 <= pos_i - pos_j < sliding_window`.

Registration: [`enable_shared_prompt_attention`] registers, for the model's current implementation `base` (`sdpa`,
`eager`, `flex_attention`, `flash_attention_2/3`), an attention function and a mask function under the name
`rankalign_shared_prompt_<base>` (`…_fa2`/`…_fa3` for flash, as transformers treats any name containing "flash" as a
flash kernel to load) and switches the model to it with the public `model.set_attn_implementation`.
[`shared_prompt_attention_enabled`] holds the switch for a block and sets each model back to its own implementation
when the block ends: the trainers hold it for the whole of `train`/`evaluate`/`predict` (gradient checkpointing
recomputes the layers during the backward, after the forward has returned, and must find the same attention), and a
bare [`trl_rankalign.forward.listwise_forward`] for its one forward. Calls without shared-prompt metadata inside the
block (an unshared batch, `generate`) run the base implementation with its own mask; over flash-attention they raise
instead, saying to set the base back (transformers' flash wrapper loads its kernel by the implementation's name, which
would then be ours). The name is never saved: `config.json` omits it. The
shared-prompt forward passes its [`SharedPromptLayout`] as the keyword argument `shared_prompt_layout`, which
transformers forwards from the model call to every attention call, and an empty 4-D `attention_mask`
([`layout_sentinel_mask`]), which transformers' mask creation returns as is (so it builds no mask at all). A decoder
layer that does not pass the model's keyword arguments on hands attention that mask without the layout, which raises;
[`probe_shared_prompt_attention`] finds such families before training.
"""

import logging
import sys
from contextlib import contextmanager
from functools import partial

import torch
from transformers import AttentionInterface
from transformers.integrations.flash_attention import get_target_dtype
from transformers.integrations.flex_attention import flex_attention_forward
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


logger = logging.getLogger(__name__)

__all__ = [
    "SHARED_PROMPT_ATTENTION",
    "SharedPromptLayout",
    "enable_shared_prompt_attention",
    "is_shared_prompt_attention_on",
    "layout_sentinel_mask",
    "probe_shared_prompt_attention",
    "shared_prompt_attention_enabled",
    "shared_prompt_attention",
    "shared_prompt_attention_name",
    "shared_prompt_attention_support",
]

SHARED_PROMPT_ATTENTION = "rankalign_shared_prompt"
# The implementations the shared path runs on, with the suffix of their registered name
BASES = {
    "sdpa": "sdpa",
    "eager": "eager",
    "flex_attention": "flex_attention",
    "flash_attention_2": "fa2",
    "flash_attention_3": "fa3",
}
SUPPORTED_LAYER_TYPES = {"full_attention", "sliding_attention"}
PREFIX_SEGMENT, PAD_SEGMENT = 0, -1  # as in trl_rankalign.data.shared_prompt_collator (this module imports only torch)


def shared_prompt_attention_name(base: str) -> str:
    """The registered name of the shared-prompt attention running on `base` (e.g. `rankalign_shared_prompt_sdpa`)."""
    return f"{SHARED_PROMPT_ATTENTION}_{BASES[base]}"


def _base_of(implementation: str | None) -> str | None:
    """The base implementation of a name: itself, or the base of one of our registered names."""
    implementation = implementation or "eager"
    for base in BASES:
        if implementation in (base, shared_prompt_attention_name(base)):
            return base
    return None


# -------------------------------------------------------------------------------------------------------- layout
class SharedPromptLayout:
    """
    Where the prefix and the branches of the packed rows are, built once per forward from `segment_ids` and
    `position_ids` (`(B, L)`, see [`pack_shared_prompt`]) and read by every layer's attention call.

    `N` branches (the non-empty segments `k >= 1`, row-major), `S` the longest prefix, `T` the longest branch. Index
    tensors address the flattened `(B * L)` positions of the packed rows:

    - `query_index` `(N * T,)`: each branch query (a padded slot repeats the branch's last token);
    - `kv_index` `(N * (S + T),)`: each branch's keys, `[prefix of its row (S slots, masked past S_b) ; itself]`;
    - `output_index` `(B * L,)`: for each packed position, its row of `[prefix outputs (B * S) ; branch outputs
      (N * T) ; one zero row]` (padding reads the zero row).

    A plain object (not a dataclass or a tuple), so that wrappers which move or copy tensor arguments (FSDP, accelerate)
    hand every layer this one object: its `calls` count and mask cache are shared.
    """

    def __init__(self, segment_ids: torch.Tensor, position_ids: torch.Tensor):
        batch_size, length = segment_ids.shape
        device = segment_ids.device
        prefix_length = (segment_ids == PREFIX_SEGMENT).sum(dim=1)  # (B,) the prefix starts every row
        num_segments = max(int(segment_ids.max()), 1)
        counts = torch.zeros(batch_size, num_segments + 1, dtype=torch.long, device=device)
        counts.scatter_add_(1, segment_ids.clamp(min=0), torch.ones_like(segment_ids))
        lengths = counts[:, 1:]  # (B, K) tokens of branch k (0 for an empty slot)
        starts = prefix_length[:, None] + lengths.cumsum(dim=1) - lengths  # (B, K) branches follow each other
        present = lengths > 0
        rows = torch.arange(batch_size, device=device)[:, None].expand_as(lengths)
        branch_row, branch_start, branch_length = rows[present], starts[present], lengths[present]  # (N,) row-major
        num_branches = int(branch_row.numel())
        max_prefix = int(prefix_length.max())
        max_branch = max(int(branch_length.max()) if num_branches else 0, 1)

        offsets = torch.arange(max_branch, device=device)
        within = torch.minimum(offsets[None, :], (branch_length - 1).clamp(min=0)[:, None])  # (N, T)
        query_flat = branch_row[:, None] * length + branch_start[:, None] + within  # (N, T)
        prefix_offsets = torch.arange(max_prefix, device=device)
        prefix_flat = branch_row[:, None] * length + torch.minimum(
            prefix_offsets[None, :], (prefix_length[branch_row] - 1).clamp(min=0)[:, None]
        )  # (N, S); slots past the row's prefix are masked
        kv_flat = torch.cat([prefix_flat, query_flat], dim=1)  # (N, S + T)

        # Output rows: prefix position t of row b -> b * S + t; branch n, offset i -> B * S + n * T + i; padding -> zero
        branch_id = torch.full_like(lengths, -1)
        branch_id[present] = torch.arange(num_branches, device=device)
        segment = segment_ids.clamp(min=1) - 1  # (B, L) branch slot of each position (any slot for prefix/padding)
        position = torch.arange(length, device=device)[None, :]
        own_branch = branch_id.gather(1, segment)  # (B, L)
        own_start = starts.gather(1, segment)
        batch = torch.arange(batch_size, device=device)[:, None]
        zero_row = batch_size * max_prefix + num_branches * max_branch
        output_index = torch.where(
            segment_ids == PREFIX_SEGMENT,
            batch * max_prefix + position,
            torch.where(
                segment_ids == PAD_SEGMENT,
                torch.full_like(segment_ids, zero_row),
                batch_size * max_prefix + own_branch * max_branch + (position - own_start),
            ),
        )
        self.batch_size, self.length = batch_size, length
        self.max_prefix, self.max_branch, self.num_branches = max_prefix, max_branch, num_branches  # S, T, N
        self.segment_ids, self.position_ids = segment_ids, position_ids
        self.prefix_length = prefix_length  # (B,)
        self.branch_row, self.branch_start, self.branch_length = branch_row, branch_start, branch_length  # (N,)
        self.query_index = query_flat.reshape(-1)
        self.kv_index = kv_flat.reshape(-1)
        self.output_index = output_index.reshape(-1)
        self.calls = 0  # attention calls that read this layout (the forward checks that the model made some)
        self._cache = {}

    def _cached(self, key, build):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def prefix_mask(self, sliding_window: int | None) -> torch.Tensor | None:
        """`(S, S)` bool mask of the prefix queries (True = attend), or None when plain causal attention is exact."""
        if sliding_window is None or sliding_window >= self.max_prefix:
            return None

        def build():
            index = torch.arange(self.max_prefix, device=self.segment_ids.device)
            difference = index[:, None] - index[None, :]  # positions of the prefix are 0..S-1 in every row
            return (difference >= 0) & (difference < sliding_window)

        return self._cached(("prefix", sliding_window), build)

    def branch_mask(self, sliding_window: int | None) -> torch.Tensor:
        """`(N, 1, T, S + T)` bool mask of the branch queries over `[prefix keys ; own keys]` (True = attend)."""

        def build():
            device = self.segment_ids.device
            prefix = torch.arange(self.max_prefix, device=device)
            own = torch.arange(self.max_branch, device=device)
            prefix_visible = prefix[None, None, :] < self.prefix_length[self.branch_row][:, None, None]  # (N, 1, S)
            prefix_visible = prefix_visible.expand(-1, self.max_branch, -1)  # (N, T, S)
            own_visible = (own[None, :] <= own[:, None]).expand(self.num_branches, -1, -1)  # (N, T, T)
            if sliding_window is not None:
                positions = self.position_ids.reshape(-1)
                query_position = positions[self.query_index].view(self.num_branches, self.max_branch, 1)
                key_position = positions[self.kv_index].view(self.num_branches, 1, -1)
                in_window = query_position - key_position < sliding_window  # (N, T, S + T)
                prefix_visible = prefix_visible & in_window[:, :, : self.max_prefix]
                own_visible = own_visible & in_window[:, :, self.max_prefix :]
            return torch.cat([prefix_visible, own_visible], dim=2)[:, None]  # the diagonal keeps every row non-empty

        return self._cached(("branch", sliding_window), build)

    def attention_mask(self, kind: str, sliding_window: int | None, additive_dtype: torch.dtype | None = None):
        """The `"prefix"` or `"branch"` mask as sdpa takes it (bool; None for the plain causal prefix) or, with
        `additive_dtype`, as eager adds it to the scores (0 where attended, the dtype's minimum elsewhere)."""
        if additive_dtype is None:
            return self.prefix_mask(sliding_window) if kind == "prefix" else self.branch_mask(sliding_window)

        def build():
            if kind == "branch":
                mask = self.branch_mask(sliding_window)
            elif (mask := self.prefix_mask(sliding_window)) is None:  # eager has no causal shortcut
                index = torch.arange(self.max_prefix, device=self.segment_ids.device)
                mask = index[None, :] <= index[:, None]
            zero = torch.zeros((), dtype=additive_dtype, device=mask.device)
            additive = torch.where(mask, zero, torch.finfo(additive_dtype).min)
            return additive if additive.dim() == 4 else additive[None, None]

        return self._cached((kind, sliding_window, additive_dtype), build)

    def flash_index(self) -> dict:
        """Varlen layout: sequences `[prefix of each row]` (keys: itself) then `[branch n]` (keys: prefix ; branch)."""

        def build():
            device = self.segment_ids.device
            length, lengths = self.length, self.prefix_length.tolist()
            branch_rows, branch_starts = self.branch_row.tolist(), self.branch_start.tolist()
            branch_lengths = self.branch_length.tolist()
            q_index, kv_index, cu_q, cu_k = [], [], [0], [0]
            for row, prefix in enumerate(lengths):
                if prefix:
                    q_index += range(row * length, row * length + prefix)
                    kv_index += range(row * length, row * length + prefix)
                    cu_q.append(cu_q[-1] + prefix)
                    cu_k.append(cu_k[-1] + prefix)
            for row, start, size in zip(branch_rows, branch_starts, branch_lengths):
                tokens = range(row * length + start, row * length + start + size)
                q_index += tokens
                kv_index += [*range(row * length, row * length + lengths[row]), *tokens]
                cu_q.append(cu_q[-1] + size)
                cu_k.append(cu_k[-1] + lengths[row] + size)
            output_index = [len(q_index)] * (self.batch_size * length)  # padding reads the zero row
            for order, flat in enumerate(q_index):
                output_index[flat] = order
            seq_q = [b - a for a, b in zip(cu_q[:-1], cu_q[1:])]
            seq_k = [b - a for a, b in zip(cu_k[:-1], cu_k[1:])]
            as_long = partial(torch.tensor, dtype=torch.long, device=device)
            return {
                "q_index": as_long(q_index),
                "kv_index": as_long(kv_index),
                "output_index": as_long(output_index),
                "cu_seqlens_q": torch.tensor(cu_q, dtype=torch.int32, device=device),
                "cu_seqlens_k": torch.tensor(cu_k, dtype=torch.int32, device=device),
                "max_seqlen_q": max(seq_q),
                "max_seqlen_k": max(seq_k),
            }

        return self._cached("flash", build)

    def block_mask(self, sliding_window: int | None):
        """FlexAttention `BlockMask` of the packed rows: the same visibility, block-sparse over `(L, L)`."""
        from torch.nn.attention.flex_attention import create_block_mask

        segment_ids, position_ids = self.segment_ids, self.position_ids

        def mask_mod(b, h, q_idx, kv_idx):
            query_segment, key_segment = segment_ids[b, q_idx], segment_ids[b, kv_idx]
            visible = (kv_idx <= q_idx) & ((key_segment == PREFIX_SEGMENT) | (key_segment == query_segment))
            if sliding_window is not None:
                visible = visible & (position_ids[b, q_idx] - position_ids[b, kv_idx] < sliding_window)
            return visible

        return self._cached(
            ("block", sliding_window),
            lambda: create_block_mask(
                mask_mod, self.batch_size, None, self.length, self.length, device=segment_ids.device
            ),
        )


# ------------------------------------------------------------------------------------------------ attention
def model_eager_attention(module: torch.nn.Module):
    """The `eager_attention_forward` of the modeling file that defines `module` (None when it defines none).

    transformers 5 gives each model family its own eager function (Gemma 2 adds logit soft-capping, GPT-OSS sinks), and
    `ALL_ATTENTION_FUNCTIONS` holds none for "eager": each attention module passes its file's function as the default.
    This is the one place that finds it (tested in tests/test_shared_prompt.py, so a change of layout fails there).
    """
    return getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)


def _eager(module):
    function = model_eager_attention(module)
    if function is None:
        raise ValueError(
            f"{type(module).__name__} defines no eager_attention_forward for the shared-prompt attention."
        )
    return function


def _attend(base, module, query, key, value, mask, dropout, scaling, softcap, kwargs):
    """One `(batch, heads, q, k)` attention call on the base implementation. `mask`: sdpa's bool mask (None: causal,
    on SDPA's `is_causal` fast path) or eager's additive mask."""
    kwargs = {key_: value_ for key_, value_ in kwargs.items() if key_ != "is_causal"}
    groups = getattr(module, "num_key_value_groups", 1)
    if base == "sdpa" and mask is not None and groups > 1 and query.device.type == "cpu" and softcap is None:
        # transformers repeats the key/value heads whenever a mask is given (CUDA's masked kernels take no GQA); the
        # CPU kernel takes GQA with a mask, and skipping the copies makes the branch call ~30% faster forward+backward
        output = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling, enable_gqa=True
        )
        return output.transpose(1, 2)
    function = sdpa_attention_forward if base == "sdpa" else _eager(module)
    options = {"is_causal": mask is None} if base == "sdpa" else {}
    output, _ = function(
        module, query, key, value, mask, dropout=dropout, scaling=scaling, softcap=softcap, **options, **kwargs
    )
    return output


def _flat(states: torch.Tensor) -> torch.Tensor:
    """`(B, H, L, D)` -> `(B * L, H, D)`: one row per packed position."""
    batch, heads, length, dim = states.shape
    return states.transpose(1, 2).reshape(batch * length, heads, dim)


def _split_attention(base, module, query, key, value, layout, dropout, scaling, sliding_window, softcap, kwargs):
    """Prefix causal + branches over [prefix ; own], on sdpa or eager (see the module docstring)."""
    batch, heads, length, _ = query.shape
    prefix, longest, branches = layout.max_prefix, layout.max_branch, layout.num_branches
    value_dim = value.size(-1)
    eager_dtype = query.dtype if base == "eager" else None
    outputs = []
    if prefix:
        prefix_out = _attend(
            base,
            module,
            query[:, :, :prefix],
            key[:, :, :prefix],
            value[:, :, :prefix],
            layout.attention_mask("prefix", sliding_window, eager_dtype),
            dropout,
            scaling,
            softcap,
            kwargs,
        )  # (B, S, H, D)
        outputs.append(prefix_out.reshape(batch * prefix, heads, value_dim))
    if branches:
        queries = _flat(query).index_select(0, layout.query_index).view(branches, longest, heads, -1).transpose(1, 2)
        keys = _flat(key).index_select(0, layout.kv_index).view(branches, prefix + longest, key.size(1), -1)
        values = _flat(value).index_select(0, layout.kv_index).view(branches, prefix + longest, value.size(1), -1)
        branch_out = _attend(
            base,
            module,
            queries,
            keys.transpose(1, 2),
            values.transpose(1, 2),
            layout.attention_mask("branch", sliding_window, eager_dtype),
            dropout,
            scaling,
            softcap,
            kwargs,
        )  # (N, T, H, D)
        outputs.append(branch_out.reshape(branches * longest, heads, value_dim))
    outputs.append(query.new_zeros(1, heads, value_dim))  # padding positions
    output = torch.cat(outputs).index_select(0, layout.output_index)  # (B * L, H, D)
    return output.view(batch, length, heads, value_dim)


def _flash_attention(base, module, query, key, value, layout, dropout, scaling, sliding_window, softcap):
    """One varlen flash-attention call over the prefix and branch sequences of [`SharedPromptLayout.flash_index`]."""
    from transformers.modeling_flash_attention_utils import lazy_import_flash_attention

    (_, flash_varlen, *_), _ = lazy_import_flash_attention(base)
    index = layout.flash_index()
    batch, heads, length, _ = query.shape
    dtype = get_target_dtype(query, module) or query.dtype
    queries = _flat(query).index_select(0, index["q_index"]).to(dtype)
    keys = _flat(key).index_select(0, index["kv_index"]).to(dtype)
    values = _flat(value).index_select(0, index["kv_index"]).to(dtype)
    options = {"softmax_scale": scaling, "causal": True}  # causal is bottom-right aligned in flash-attention >= 2.1
    if sliding_window is not None:
        options["window_size"] = (sliding_window - 1, 0)
    if softcap is not None:
        options["softcap"] = softcap
    if dropout:
        options["dropout_p"] = dropout
    output = flash_varlen(
        queries,
        keys,
        values,
        index["cu_seqlens_q"],
        index["cu_seqlens_k"],
        index["max_seqlen_q"],
        index["max_seqlen_k"],
        **options,
    )
    output = (output[0] if isinstance(output, tuple) else output).to(query.dtype)  # (total, H, D)
    output = torch.cat([output, output.new_zeros(1, *output.shape[1:])]).index_select(0, index["output_index"])
    return output.view(batch, length, heads, -1)


def shared_prompt_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    shared_prompt_layout: SharedPromptLayout | None = None,
    *,
    base: str,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """
    The attention function registered as `rankalign_shared_prompt_<base>` (transformers' attention interface).

    Args:
        module: The model's attention module (read for GQA groups and its eager function).
        query: `(B, H, L, D)` of the packed rows; `key`, `value`: `(B, H_kv, L, D)`.
        attention_mask: Ignored on the shared path (the layout says who sees whom); the base's mask otherwise.
        sliding_window: This layer's window (keys less than this many positions back), as the module passes it.
        shared_prompt_layout: The [`SharedPromptLayout`] of the batch; without it, the call is an ordinary one and runs
            the `base` implementation unchanged.
        base: The implementation the shared path runs on (bound at registration).

    Returns:
        `(B, L, H, D)` attention output (as transformers' attention functions return it) and no weights.
    """
    if shared_prompt_layout is None and _is_layout_sentinel(attention_mask):
        # The shared-prompt forward passes this empty mask and the layout together; a layer that drops the model's
        # keyword arguments (Falcon, StableLM, ...) hands attention the mask alone
        raise ValueError(
            f"{type(module).__name__} was called without the shared-prompt layout: its decoder layer does not pass "
            "the model's keyword arguments to attention, so the shared-prompt forward cannot run this model."
        )
    if shared_prompt_layout is None:  # not a shared-prompt batch: the model's own implementation, untouched
        options = {"dropout": dropout, "scaling": scaling, "sliding_window": sliding_window, "softcap": softcap}
        if base == "sdpa":
            return sdpa_attention_forward(module, query, key, value, attention_mask, **options, **kwargs)
        if base == "eager":
            return _eager(module)(module, query, key, value, attention_mask, **options, **kwargs)
        if base == "flex_attention":
            return flex_attention_forward(module, query, key, value, attention_mask, **options, **kwargs)
        raise ValueError(
            f"The model's attention is the shared-prompt attention over {base}, which only runs shared-prompt "
            f"batches; call model.set_attn_implementation({base!r}) to use the model for anything else."
        )
    shared_prompt_layout.calls += 1
    if base in ("sdpa", "eager"):
        output = _split_attention(
            base, module, query, key, value, shared_prompt_layout, dropout, scaling, sliding_window, softcap, kwargs
        )
    elif base == "flex_attention":
        block_mask = shared_prompt_layout.block_mask(sliding_window)
        output, _ = flex_attention_forward(
            module, query, key, value, block_mask, dropout=dropout, scaling=scaling, softcap=softcap
        )
    else:
        output = _flash_attention(
            base, module, query, key, value, shared_prompt_layout, dropout, scaling, sliding_window, softcap
        )
    return output, None


def _is_layout_sentinel(attention_mask) -> bool:
    """The empty 4-D mask the shared-prompt forward passes instead of a real one (see `layout_sentinel_mask`)."""
    return isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4 and attention_mask.size(-1) == 0


def layout_sentinel_mask(batch_size: int, device) -> torch.Tensor:
    """The `attention_mask` of a shared-prompt forward: an empty `(B, 1, 0, 0)` bool tensor. transformers' mask
    creation returns a 4-D mask as is, so it builds none; the attention reads the layout instead, and any attention
    function that gets this mask without the layout fails on it rather than attending across completions."""
    return torch.ones(batch_size, 1, 0, 0, dtype=torch.bool, device=device)


# ------------------------------------------------------------------------------------------------ registration
def _register(base: str) -> str:
    name = shared_prompt_attention_name(base)
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, partial(shared_prompt_attention, base=base))
        # Unshared calls keep the base's masks; a shared call passes a 4-D mask, which mask creation returns as is
        base_mask = "flash_attention_2" if base.startswith("flash") else base
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base_mask])
    return name


def _text_config(model):
    return model.config.get_text_config()


def _pretrained(model):
    """The transformers model under a PEFT wrapper (PEFT forwards `set_attn_implementation`, not the model's module)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def shared_prompt_attention_support(model, probe: bool = True) -> list[str]:
    """Why the shared-prompt attention cannot run `model` exactly (empty when it can).

    It needs an implementation it runs on (`sdpa`, `eager`, `flex_attention`, `flash_attention_2/3`; its own name
    counts as its base), only full or sliding-window attention layers, for eager the model family's eager function,
    and decoder layers that hand the layout to attention: with `probe`, [`probe_shared_prompt_attention`] runs a
    seven-token forward both ways and compares (not assumed from the family).
    """
    config = _text_config(model)
    implementation = config._attn_implementation
    base = _base_of(implementation)
    reasons = []
    if base is None:
        reasons.append(
            f"attn_implementation={implementation!r} (the shared-prompt attention runs on {', '.join(BASES)})"
        )
    other_layers = set(getattr(config, "layer_types", None) or []) - SUPPORTED_LAYER_TYPES
    if other_layers:
        reasons.append(f"layer types {sorted(other_layers)} (only full and sliding-window attention are supported)")
    if base == "eager" and model_eager_attention(_pretrained(model)) is None:
        reasons.append(f"{type(model).__name__}'s modeling file defines no eager_attention_forward")
    if probe and not reasons:
        reasons += probe_shared_prompt_attention(model)
    return reasons


def _unmaterialised(model) -> bool:
    """Parameters that a forward outside the distributed wrapper cannot read: meta, ZeRO-3 partitioned or DTensor."""
    for parameter in model.parameters():
        if parameter.device.type == "meta" or hasattr(parameter, "ds_id") or type(parameter).__name__ == "DTensor":
            return True
    return False


def probe_shared_prompt_attention(model) -> list[str]:
    """
    Run `model` on one tiny ranked list both ways and say why the shared-prompt forward is not exact on it (empty when
    it is): a prompt of 3 tokens with 2 completions of 2 tokens, as the packed row `[p0 p1 | p2 c0 | p2 d0]` (positions
    `0 1 | 2 3 | 2 3`) under the shared-prompt attention, and as the unshared rows `[p0 p1 p2 c0 c1]` and
    `[p0 p1 p2 d0 d1]` under the model's own attention; every packed position's log-softmax must equal the unshared
    row's at the same position (float32: to 1e-4 absolute + 1e-4 relative; half precision, whose rounding the two
    orders of summation meet differently: 0.25 + 5%, loose enough for bf16 noise, not for attention across
    completions). A decoder layer that does not pass the layout on to attention (Falcon, StableLM, Nemotron, ...)
    makes the packed forward fail (the empty mask reaches attention without the layout) or attend across completions;
    either is reported.

    The model is left as it was (attention implementation, train/eval mode of every module). Skipped (nothing reported)
    when its parameters cannot be read outside a distributed wrapper (meta, ZeRO-3, FSDP's DTensors): the forward
    itself then fails loudly on such a layer.
    """
    inner = _pretrained(model)
    if _unmaterialised(inner):
        logger.info(
            "Shared-prompt probe skipped for %s: its parameters are sharded or not materialised.", type(inner).__name__
        )
        return []
    parameter = next(inner.parameters())
    device = parameter.device
    vocab_size = _text_config(inner).vocab_size
    tokens = [(7 * i + 3) % vocab_size for i in range(1, 8)]  # p0 p1 p2 c0 c1 d0 d1
    p0, p1, p2, c0, c1, d0, d1 = tokens
    as_long = partial(torch.tensor, dtype=torch.long, device=device)
    packed, positions, segments = (
        as_long([[p0, p1, p2, c0, p2, d0]]),
        as_long([[0, 1, 2, 3, 2, 3]]),
        as_long([[0, 0, 1, 1, 2, 2]]),
    )
    unshared = as_long([[p0, p1, p2, c0, c1], [p0, p1, p2, d0, d1]])
    modes = {module: module.training for module in inner.modules()}
    inner.eval()
    try:
        with torch.no_grad():
            expected = inner(input_ids=unshared, use_cache=False).logits.float().log_softmax(-1)  # (2, 5, V)
            expected = torch.cat([expected[0, :4], expected[1, 2:4]])  # at the packed row's positions
            layout = SharedPromptLayout(segments, positions)
            with shared_prompt_attention_enabled(model):
                got = (
                    inner(
                        input_ids=packed,
                        attention_mask=layout_sentinel_mask(1, device),
                        position_ids=positions,
                        shared_prompt_layout=layout,
                        use_cache=False,
                    )
                    .logits.float()
                    .log_softmax(-1)[0]
                )  # (6, V)
    except Exception as error:  # any failure of the packed forward is a reason to refuse it
        return [f"a probe forward of the packed layout failed ({type(error).__name__}: {str(error)[:300]})"]
    finally:
        for module, training in modes.items():
            module.training = training
    if layout.calls == 0:
        return ["its layers never called the shared-prompt attention (probe)"]
    layers = getattr(_text_config(model), "num_hidden_layers", None)
    if layers is not None and layout.calls < layers:  # counted, not measured: a bfloat16 difference can hide a leak
        return [
            f"only {layout.calls} of its {layers} layers called the shared-prompt attention (probe): some layer "
            "does not hand the layout to attention"
        ]
    atol, rtol = (1e-4, 1e-4) if parameter.dtype in (torch.float32, torch.float64) else (0.25, 5e-2)
    if not torch.isclose(got, expected, rtol=rtol, atol=atol).all():
        difference = (got - expected).abs().max().item()
        return [
            f"a probe of the packed layout differs from the unshared rows by up to {difference:.3g} log-prob "
            f"(tolerance {atol:g} + {rtol:g} relative): some layer does not hand the layout to attention"
        ]
    return []


def enable_shared_prompt_attention(model) -> str:
    """
    Switch `model` (a `PreTrainedModel`, possibly PEFT-wrapped) to the shared-prompt attention over its current
    implementation, with the public `set_attn_implementation`; idempotent. Returns the registered name.

    Raises:
        ValueError: naming the model and the reason when the shared-prompt attention cannot run it exactly.
    """
    reasons = shared_prompt_attention_support(model, probe=False)
    if reasons:
        raise ValueError(f"The shared-prompt forward cannot run {type(model).__name__}: {'; '.join(reasons)}.")
    config = _text_config(model)
    base = _base_of(config._attn_implementation)
    name = _register(base)
    if config._attn_implementation != name:
        _pretrained(model).set_attn_implementation(name)
        if _text_config(model)._attn_implementation != name:  # transformers warns and skips such models
            raise ValueError(
                f"The shared-prompt forward cannot run {type(model).__name__}: it does not let its attention "
                "implementation be set (it does not use transformers' attention interface)."
            )
    return name


def is_shared_prompt_attention_on(model) -> bool:
    """Whether `model` currently runs the shared-prompt attention (over any base)."""
    implementation = _text_config(model)._attn_implementation
    return implementation is not None and implementation.startswith(SHARED_PROMPT_ATTENTION)


@contextmanager
def shared_prompt_attention_enabled(*models):
    """
    Switch each model to the shared-prompt attention ([`enable_shared_prompt_attention`]) for the block, and set each
    one it switched back to its own implementation on exit (with the public `set_attn_implementation`), whatever
    happens in the block. A model already switched is left to whoever switched it, so blocks nest.

    Keep the block open through the backward when gradient checkpointing is on: the recomputed layers must find the
    same attention. The trainers hold it for the whole of `train`, `evaluate` and `predict`.
    """
    switched = []
    try:
        for model in models:
            if model is None or is_shared_prompt_attention_on(model):
                continue
            before = _text_config(model)._attn_implementation
            enable_shared_prompt_attention(model)
            switched.append((model, before))
        yield
    finally:
        for model, before in reversed(switched):
            _pretrained(model).set_attn_implementation(before)
