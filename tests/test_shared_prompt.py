"""The shared-prompt forward against the unshared one: same log-probs, same gradients, for every set-up it supports."""

import json
import random
from contextlib import nullcontext

import pytest
import torch
from transformers import (
    AttentionInterface,
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
)
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import create_causal_mask
from trl.trainer.utils import add_fused_lm_head

from trl_rankalign.data.collator import DataCollatorForRankedPreference
from trl_rankalign.data.shared_prompt_collator import DataCollatorForSharedPromptRankedPreference, pack_shared_prompt
from trl_rankalign.forward import listwise_forward, scored_positions, shared_prompt_support
from trl_rankalign.shared_prompt_attention import (
    SharedPromptLayout,
    enable_shared_prompt_attention,
    model_eager_attention,
    shared_prompt_attention_enabled,
    shared_prompt_attention_name,
)


PAD = 0
ATOL = 1e-5


def random_examples(seed: int, vocab_size: int, num_prompts: int = 3, with_ref: bool = False) -> list[dict]:
    """Ranked lists with prompts of 0-12 tokens, K of 2-5 (so padded slots), completions of 1-9 tokens and ties."""
    rng = random.Random(seed)
    examples = []
    for b in range(num_prompts):
        prompt_length = 0 if (seed + b) % 5 == 0 else rng.randint(1, 12)
        num_completions = rng.randint(2, 5)
        example = {
            "prompt_ids": [rng.randrange(1, vocab_size) for _ in range(prompt_length)],
            "completion_ids": [
                [rng.randrange(1, vocab_size) for _ in range(rng.randint(1, 9))] for _ in range(num_completions)
            ],
            "scores": [float(rng.randint(0, 3)) for _ in range(num_completions)],
        }
        if with_ref:
            example["ref_logps"] = [rng.uniform(-20, 0) for _ in range(num_completions)]
        examples.append(example)
    return examples


def unshared_logps(model, examples, max_length=None):
    """The forward of `RankedPreferenceTrainer._compute_loss`: `(B, K)` and the completion tokens' log-probs in order."""
    batch = DataCollatorForRankedPreference(pad_token_id=PAD, max_length=max_length)(examples)
    batch_size, num_completions = batch["list_mask"].shape
    completion_mask = batch["completion_mask"]
    labels = batch["input_ids"].masked_fill(completion_mask == 0, -100)
    outputs = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=labels,
        fused_lm_head=True,
        use_cache=False,
    )
    shift_completion_mask = completion_mask[:, 1:].bool()
    per_token_logps = outputs.log_probs[:, -shift_completion_mask.size(1) :]
    logps = per_token_logps.sum(dim=1).view(num_completions, batch_size).T
    return logps, per_token_logps[shift_completion_mask], shift_completion_mask.sum(dim=1)


def shared_logps(model, examples, max_length=None):
    batch = pack_shared_prompt(examples, pad_token_id=PAD, max_length=max_length, pad_to_multiple_of=8)
    out = listwise_forward(model, batch)
    mask = out.completion_mask.bool()
    return out.logps, out.per_token_logps[mask], mask.sum(dim=1)


def load_tiny(tiny_path, attn_implementation):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        tiny_path, dtype=torch.float32, attn_implementation=attn_implementation
    )
    add_fused_lm_head(model)
    return model


def assert_same_logps_and_grads(model, examples, max_length=None):
    params = [p for p in model.parameters() if p.requires_grad]
    weights = torch.randn(len(examples), max(len(e["completion_ids"]) for e in examples))

    results = []
    # Gradient checkpointing recomputes the layers in the backward: the switch is held through it, as the trainers do
    # (a bare forward switches for itself and sets the model back)
    checkpointing = model.get_base_model() if hasattr(model, "get_base_model") else model
    held = shared_prompt_attention_enabled(model) if checkpointing.is_gradient_checkpointing else nullcontext()
    with held:
        for forward in (unshared_logps, shared_logps):
            logps, per_token, lengths = forward(model, examples, max_length)
            loss = (weights * logps).sum() + per_token.square().mean()  # a sequence and a token term
            results.append((logps, per_token, lengths, torch.autograd.grad(loss, params)))
    (logps, per_token, lengths, grads), (s_logps, s_per_token, s_lengths, s_grads) = results

    assert torch.equal(lengths, s_lengths)
    torch.testing.assert_close(s_logps, logps, atol=ATOL, rtol=0)
    torch.testing.assert_close(s_per_token, per_token, atol=ATOL, rtol=0)
    assert any(g.abs().sum() > 0 for g in grads)
    for g, s_g in zip(grads, s_grads):
        torch.testing.assert_close(s_g, g, atol=ATOL, rtol=1e-4)


def test_pack_exact_tensors():
    examples = [
        {"prompt_ids": [1, 2], "completion_ids": [[3], [4, 5]], "scores": [0.0, 1.0], "ref_logps": [-1.0, -2.0]},
        {
            "prompt_ids": [6],
            "completion_ids": [[7], [8], [9, 10, 11]],
            "scores": [2.0, 3.0, 2.0],
            "ref_logps": [1, 2, 3],
        },
    ]
    batch = DataCollatorForSharedPromptRankedPreference(pad_token_id=PAD)(examples)
    unshared = DataCollatorForRankedPreference(pad_token_id=PAD)(examples)
    # prompt 0: prefix [1] | rank 1: [2, 4] scores 4, 5 | rank 2: [2] scores 3 | padding
    # prompt 1: no prefix (its one token starts each branch) | rank 1: [6] scores 8 | rank 2: [6] scores 7
    #           | rank 3: [6, 9, 10] scores 9, 10, 11
    assert batch["input_ids"].tolist() == [[1, 2, 4, 2, 0], [6, 6, 6, 9, 10]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 1, 0], [0, 0, 0, 1, 2]]
    assert batch["segment_ids"].tolist() == [[0, 1, 1, 2, -1], [1, 2, 3, 3, 3]]
    assert batch["shift_labels"].tolist() == [[-100, 4, 5, 3, -100], [8, 7, 9, 10, 11]]
    assert batch["padding_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    # (B, K, T): prompt 0 ranks 1-3 (rank 3 is an empty slot), then prompt 1 ranks 1-3
    assert batch["completion_positions"].tolist() == [
        [[1, 2, 0], [3, 0, 0], [0, 0, 0]],
        [[0, 0, 0], [1, 0, 0], [2, 3, 4]],
    ]
    assert batch["completion_mask"].tolist() == [[[1, 1, 0], [1, 0, 0], [0, 0, 0]], [[1, 0, 0], [1, 0, 0], [1, 1, 1]]]
    lengths = batch["completion_mask"].sum(2).T.reshape(-1)  # completion-major, as the unshared rows
    assert lengths.tolist() == unshared["completion_mask"][:, 1:].sum(1).tolist()
    for key in ("list_mask", "scores", "ref_logps"):
        assert torch.equal(batch[key], unshared[key])


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_matches_unshared(tiny_path, attn_implementation):
    model = load_tiny(tiny_path, attn_implementation)
    model.eval()
    for seed in range(3):
        assert_same_logps_and_grads(model, random_examples(seed, model.config.vocab_size))
    # Truncation cuts the same tokens in both layouts
    assert_same_logps_and_grads(model, random_examples(7, model.config.vocab_size), max_length=9)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_matches_unshared_gradient_checkpointing(tiny_path, attn_implementation):
    model = load_tiny(tiny_path, attn_implementation)
    model.gradient_checkpointing_enable()
    model.train()
    assert model.is_gradient_checkpointing
    assert_same_logps_and_grads(model, random_examples(11, model.config.vocab_size))


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_matches_unshared_lora(tiny_path, attn_implementation):
    from peft import LoraConfig, get_peft_model

    model = load_tiny(tiny_path, attn_implementation)
    # Non-zero B so the adapter changes the forward
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(model, config)
    model.train()
    assert_same_logps_and_grads(model, random_examples(21, model.config.vocab_size))


# ------------------------------------------------------------------------------------------- model families
COMMON = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
WINDOW = 4  # shorter than the sequences of random_examples (up to 21 tokens), so windows hide keys


def family_config(family: str):
    """Tiny configs of each family, with their kind of sliding window: none (Llama), per layer (Qwen2 with
    use_sliding_window, Gemma 2/3: `layer_types`), config-level on every layer (Mistral, Phi3)."""
    if family == "llama":
        return LlamaConfig(**COMMON)
    if family == "qwen2":
        return Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)
    if family == "mistral":
        return MistralConfig(**COMMON, sliding_window=WINDOW)
    if family == "phi3":
        return Phi3Config(**COMMON, sliding_window=WINDOW)
    if family == "gemma2":  # attention logit soft-capping: eager only
        return Gemma2Config(**COMMON, head_dim=8, sliding_window=WINDOW)
    if family == "gemma3":
        layer_types = ["sliding_attention", "full_attention"]
        return Gemma3TextConfig(**COMMON, head_dim=8, sliding_window=WINDOW, layer_types=layer_types)
    raise ValueError(family)


def build_family(family: str, attn_implementation: str, dtype=torch.float32):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(family_config(family), attn_implementation=attn_implementation)
    model = model.to(dtype)
    add_fused_lm_head(model)
    return model


FAMILY_CASES = [
    ("llama", "sdpa"),
    ("llama", "eager"),
    ("qwen2", "sdpa"),
    ("qwen2", "eager"),
    ("mistral", "sdpa"),
    ("mistral", "eager"),
    ("phi3", "sdpa"),
    ("phi3", "eager"),
    ("gemma2", "eager"),
    ("gemma3", "sdpa"),
    ("gemma3", "eager"),
]


@pytest.mark.parametrize("family, attn_implementation", FAMILY_CASES)
def test_matches_unshared_families(family, attn_implementation):
    """Every family and kind of sliding window: eval mode, padding, mixed prompt and completion lengths, K of 2-5 with
    padded slots, an empty prompt, and max_length truncation."""
    model = build_family(family, attn_implementation)
    model.eval()
    for seed in (4, 5):
        assert_same_logps_and_grads(model, random_examples(seed, model.config.vocab_size))
    assert_same_logps_and_grads(model, random_examples(8, model.config.vocab_size), max_length=11)
    assert model.config._attn_implementation == attn_implementation  # set back after each forward


@pytest.mark.parametrize("family, attn_implementation", [("gemma2", "eager"), ("mistral", "sdpa")])
def test_matches_unshared_families_gradient_checkpointing(family, attn_implementation):
    model = build_family(family, attn_implementation)
    model.gradient_checkpointing_enable()
    model.train()
    assert_same_logps_and_grads(model, random_examples(12, model.config.vocab_size))


def test_windows_are_exercised():
    """The examples are longer than the window, so a model without it scores them differently: the family tests would
    catch a window left out."""
    model = build_family("mistral", "sdpa")
    examples = random_examples(4, model.config.vocab_size)
    windowed, _, _ = unshared_logps(model, examples)
    model.config.sliding_window = None
    full, _, _ = unshared_logps(model, examples)
    assert (windowed - full).abs().max() > 1e-3


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_bf16_within_bf16_tolerance(attn_implementation):
    """In bf16 the shared path is as close to the float32 log-probs as the unshared path is (both round the same
    activations; only the order of the attention's sums differs)."""
    examples = random_examples(6, COMMON["vocab_size"])
    exact = build_family("qwen2", attn_implementation)
    exact.eval()
    with torch.no_grad():
        reference = unshared_logps(exact, examples)[0]
        model = build_family("qwen2", attn_implementation, dtype=torch.bfloat16)
        model.eval()
        unshared = unshared_logps(model, examples)[0].float()
        shared = shared_logps(model, examples)[0].float()
    unshared_error = (unshared - reference).abs().max()
    torch.testing.assert_close(shared, unshared, atol=1e-2, rtol=1.6e-2)  # bf16's relative resolution is 2^-7
    assert (shared - reference).abs().max() <= 2 * unshared_error + 1e-2


@pytest.mark.slow
def test_matches_unshared_flex_attention_forward():
    """FlexAttention runs the packed rows under a block mask of the same structure. CPU has no flex backward (and
    compiles for a minute), so this checks the forward, in the slow set; tests/test_gpu.py checks the gradients. The
    unshared reference runs the same weights through sdpa: a second flex compile with other shapes (dynamic) hits a
    C++ code-generation error of torch 2.13's CPU inductor, with or without this package."""
    model = build_family("qwen2", "flex_attention")
    model.eval()
    reference = build_family("qwen2", "sdpa")
    reference.eval()
    examples = random_examples(4, model.config.vocab_size)
    with torch.no_grad():
        shared = shared_logps(model, examples)[0]
        unshared = unshared_logps(reference, examples)[0]
    torch.testing.assert_close(shared, unshared, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------- the layout
def test_layout_exact_tensors():
    # row 0: prefix [0, 1] | branch 1 at 2-3 | branch 2 at 4 | padding at 5
    # row 1: no prefix | branch 1 at 0 | branch 2 at 1-2 | branch 3 at 3-5
    segment_ids = torch.tensor([[0, 0, 1, 1, 2, -1], [1, 2, 2, 3, 3, 3]])
    position_ids = torch.tensor([[0, 1, 2, 3, 2, 0], [0, 0, 1, 0, 1, 2]])
    layout = SharedPromptLayout(segment_ids, position_ids)
    assert (layout.max_prefix, layout.max_branch, layout.num_branches) == (2, 3, 5)
    assert layout.branch_row.tolist() == [0, 0, 1, 1, 1]
    assert layout.branch_start.tolist() == [2, 4, 0, 1, 3]
    assert layout.branch_length.tolist() == [2, 1, 1, 2, 3]
    # Branch queries (flat positions, row 1 starts at 6); padded slots repeat the branch's last token
    assert layout.query_index.view(5, 3).tolist() == [[2, 3, 3], [4, 4, 4], [6, 6, 6], [7, 8, 8], [9, 10, 11]]
    # Keys: [prefix of the row (2 slots) ; the branch]; row 1 has no prefix, its 2 slots are masked below
    assert layout.kv_index.view(5, 5).tolist() == [
        [0, 1, 2, 3, 3],
        [0, 1, 4, 4, 4],
        [6, 6, 6, 6, 6],
        [6, 6, 7, 8, 8],
        [6, 6, 9, 10, 11],
    ]
    # Output rows: prefix b * 2 + t; branch 4 + n * 3 + i; padding the zero row 4 + 15
    assert layout.output_index.view(2, 6).tolist() == [[0, 1, 4, 5, 7, 19], [10, 13, 14, 16, 17, 18]]
    mask = layout.branch_mask(None)[:, 0].int()
    assert mask[0].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]  # prefix + causal own keys
    assert mask[2].tolist() == [[0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]  # no prefix in row 1
    # A window of 2 positions: branch 1 of row 0 (positions 2, 3) sees prefix position 1 from position 2 only (its
    # padded third slot repeats position 3)
    assert layout.branch_mask(2)[0, 0].int().tolist() == [[0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]
    assert layout.prefix_mask(None) is None and layout.prefix_mask(1).int().tolist() == [[1, 0], [0, 1]]


def test_no_dense_mask_is_built(tiny_path):
    """No tensor of the packed row's (L, L) shape goes through any op of the shared forward and backward."""
    model = load_tiny(tiny_path, "sdpa")
    rng = random.Random(0)
    example = {
        "prompt_ids": [rng.randrange(3, 60) for _ in range(50)],
        "completion_ids": [[rng.randrange(3, 60) for _ in range(n)] for n in (3, 4, 5, 6)],
        "scores": [4.0, 3.0, 2.0, 1.0],
    }
    batch = pack_shared_prompt([example, example], pad_token_id=PAD)
    length = batch["input_ids"].size(1)
    assert length == 49 + 18 and length not in (model.config.hidden_size, model.config.intermediate_size)
    with torch.profiler.profile(record_shapes=True) as profile:
        listwise_forward(model, batch).logps.sum().backward()
    shapes = [shape for event in profile.events() for shape in event.input_shapes if isinstance(shape, list)]
    assert shapes and not [shape for shape in shapes if len(shape) >= 2 and shape[-2:] == [length, length]]


def test_transformers_returns_a_4d_mask_as_is():
    """The adaptation the forward relies on: transformers' mask creation returns a 4-D `attention_mask` untouched
    (here an empty one, which the shared-prompt attention ignores), so it builds no mask of its own."""
    config = family_config("llama")
    config._attn_implementation = "sdpa"
    no_mask = torch.ones(2, 1, 0, 0, dtype=torch.bool)
    embeds = torch.zeros(2, 7, config.hidden_size)
    assert create_causal_mask(config, embeds, no_mask, None, position_ids=torch.arange(7)[None]) is no_mask


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "phi3", "gemma2", "gemma3"])
def test_finds_each_familys_eager_attention(family):
    """The one place that reads a modeling file's `eager_attention_forward` finds it for every family."""
    model = build_family(family, "eager")
    attention = model.model.layers[0].self_attn
    assert model_eager_attention(attention) is not None
    assert model_eager_attention(attention).__module__ == type(attention).__module__


# ------------------------------------------------------------------------------------------ registration
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_unshared_calls_run_the_base_implementation(tiny_path, attn_implementation):
    """Once switched, the model's ordinary calls (a left-padded batch, `generate` with a cache) give exactly what they
    gave before, and the switch is never saved."""
    model = load_tiny(tiny_path, attn_implementation)
    model.eval()
    input_ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    attention_mask = (input_ids != 0).long()
    with torch.no_grad():
        before = model(input_ids=input_ids, attention_mask=attention_mask).logits
        generated = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=4, do_sample=False)
        name = enable_shared_prompt_attention(model)
        assert model.config._attn_implementation == name == shared_prompt_attention_name(attn_implementation)
        assert enable_shared_prompt_attention(model) == name  # idempotent
        after = model(input_ids=input_ids, attention_mask=attention_mask).logits
        regenerated = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=4, do_sample=False)
    assert torch.equal(before, after) and torch.equal(generated, regenerated)
    assert "rankalign" not in json.dumps(model.config.to_dict())


def test_refuses_what_it_cannot_run_exactly(tiny_path):
    model = load_tiny(tiny_path, "sdpa")
    AttentionInterface.register("test_custom_attention", sdpa_attention_forward)
    model.set_attn_implementation("test_custom_attention")
    assert "test_custom_attention" in " ".join(shared_prompt_support(model))
    batch = pack_shared_prompt(random_examples(1, model.config.vocab_size), pad_token_id=PAD)
    with pytest.raises(ValueError, match=f"cannot run {type(model).__name__}: attn_implementation"):
        listwise_forward(model, batch)

    model.set_attn_implementation("sdpa")
    model.config.layer_types = ["full_attention", "linear_attention"]
    assert "linear_attention" in " ".join(shared_prompt_support(model))


def test_entropy_layout(tiny_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    examples = random_examples(5, model.config.vocab_size)
    out = listwise_forward(model, pack_shared_prompt(examples, pad_token_id=PAD))
    assert out.entropy.shape == out.per_token_logps.shape
    assert (out.entropy[out.completion_mask.bool()] > 0).all()
    assert (out.entropy[~out.completion_mask.bool()] == 0).all()


# ------------------------------------------------------------------------------------------ scored positions only
HEAD_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")


def full_head_outputs(model, batch):
    """Every field of TRL's fused head over every position (no `scored_positions`), at the completion tokens."""
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    outputs = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels, fused_lm_head=True
    )
    mask = batch["completion_mask"][:, 1:].bool()
    return {name: getattr(outputs, name)[:, -mask.size(1) :][mask] for name in HEAD_OUTPUTS}


@pytest.mark.parametrize("prompt_tuning", [False, True])
def test_unshared_forward_scores_only_completion_tokens(tiny_path, prompt_tuning):
    """The default forward hands the LM head the completion positions only, with every head field unchanged (also
    under prompt-learning PEFT, whose virtual tokens lead the hidden states); the hook is gone afterwards."""
    model = load_tiny(tiny_path, "sdpa")
    add_fused_lm_head(model, outputs=HEAD_OUTPUTS)
    if prompt_tuning:
        from peft import PromptTuningConfig, get_peft_model

        model = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    batch = DataCollatorForRankedPreference(pad_token_id=PAD)(random_examples(3, 200))
    backbone = (model.get_base_model() if prompt_tuning else model).base_model
    backbone_outputs = []  # the backbone's output object, as the fused head then reads it
    probe = backbone.register_forward_hook(lambda module, args, output: backbone_outputs.append(output))
    out = listwise_forward(model, batch)
    probe.remove()
    mask = out.completion_mask.bool()
    assert len(backbone_outputs) == 1
    assert backbone_outputs[0].last_hidden_state.shape[:2] == (1, mask.sum())  # one row per completion token
    assert not backbone._forward_hooks
    reference = full_head_outputs(model, batch)
    fields = {"log_probs": "per_token_logps", "entropy": "entropy", "mean_logits": "mean_logits", "is_top1": "is_top1"}
    for name in HEAD_OUTPUTS:
        values = getattr(out, fields[name])
        torch.testing.assert_close(values[mask], reference[name], atol=ATOL, rtol=0)
        assert not values[~mask].any()


def test_scored_positions_fails_loudly_when_the_head_reads_otherwise(tiny_path):
    """If TRL's fused head stopped reading the backbone's `last_hidden_state` row for row, the forward would raise
    naming the adaptation instead of scoring the wrong rows."""
    model = load_tiny(tiny_path, "sdpa")
    batch = DataCollatorForRankedPreference(pad_token_id=PAD)(random_examples(4, 200))
    length = batch["input_ids"].size(1)
    with scored_positions(model, torch.tensor([0, 1, 2]), length) as seen:
        pass  # no forward ran: the hook never fired
    with pytest.raises(RuntimeError, match="scored_positions needs updating"):
        seen.check(torch.zeros(1, 3))
    labels = batch["input_ids"].reshape(-1)[1:4][None]  # positions 0-2 score tokens 1-3
    with scored_positions(model, torch.tensor([0, 1, 2]), length) as seen:
        outputs = model(input_ids=batch["input_ids"], shift_labels=labels, fused_lm_head=True)
    seen.check(outputs.log_probs)  # (1, 3): as expected
    with pytest.raises(RuntimeError, match=r"expected \(1, 3\)"):
        seen.check(outputs.log_probs.expand(2, 3))  # as if TRL had kept a batch dimension of its own
