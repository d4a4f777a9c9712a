"""The shared-prompt forward against the unshared one: same log-probs, same gradients, for every set-up it supports."""

import random

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM
from trl.trainer.utils import add_fused_lm_head

from trl_rankalign.data.collator import DataCollatorForRankedPreference
from trl_rankalign.data.shared_prompt_collator import DataCollatorForSharedPromptRankedPreference, pack_shared_prompt
from trl_rankalign.forward import listwise_forward, shared_prompt_attention_mask


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
    # completion-major: (rank 1, prompt 0), (rank 1, prompt 1), (rank 2, prompt 0), ..., (rank 3, prompt 0) is empty
    assert batch["completion_positions"].tolist() == [[1, 2, 0], [0, 0, 0], [3, 0, 0], [1, 0, 0], [0, 0, 0], [2, 3, 4]]
    assert batch["completion_mask"].tolist() == [[1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]]
    assert batch["completion_mask"].sum(1).tolist() == unshared["completion_mask"][:, 1:].sum(1).tolist()
    for key in ("list_mask", "scores", "ref_logps"):
        assert torch.equal(batch[key], unshared[key])


def test_mask_blocks_other_branches():
    segment_ids = torch.tensor([[0, 0, 1, 1, 2, -1]])
    position_ids = torch.tensor([[0, 1, 2, 3, 2, 0]])
    mask = shared_prompt_attention_mask(segment_ids, position_ids, "sdpa")[0, 0].int()
    assert mask.tolist() == [
        [1, 0, 0, 0, 0, 0],  # prefix: causal
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],  # branch 1: prefix + itself
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],  # branch 2: prefix + itself, not branch 1
        [1, 1, 0, 0, 0, 1],  # padding: never empty
    ]
    additive = shared_prompt_attention_mask(segment_ids, position_ids, "eager", torch.float32)
    assert torch.equal(additive[0, 0] == 0, mask.bool())
    with pytest.raises(ValueError, match="flash_attention_2"):
        shared_prompt_attention_mask(segment_ids, position_ids, "flash_attention_2")


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


def test_matches_unshared_sliding_window():
    """Sliding-window layers get their own mask, the window measured in positions as in the unshared row."""
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=4,
        max_window_layers=1,  # layer 0 full attention, layer 1 sliding
        attn_implementation="sdpa",
    )
    model = Qwen2ForCausalLM(config)
    assert "sliding_attention" in model.config.layer_types
    add_fused_lm_head(model)
    model.eval()
    assert_same_logps_and_grads(model, random_examples(3, config.vocab_size))


@pytest.mark.parametrize("family", ["mistral", "phi3"])
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_matches_unshared_config_level_sliding_window(family, attn_implementation):
    """Mistral and Phi3 keep the window in `config.sliding_window`, not in `layer_types`, and apply it to every layer
    through their own mask, which the packed 4-D mask replaces: the window must be in ours (sequences here are up to
    21 tokens, the window 4)."""
    from transformers import MistralConfig, MistralForCausalLM, Phi3Config, Phi3ForCausalLM

    config_class, model_class = {
        "mistral": (MistralConfig, MistralForCausalLM),
        "phi3": (Phi3Config, Phi3ForCausalLM),
    }[family]
    torch.manual_seed(0)
    config = config_class(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=4,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        attn_implementation=attn_implementation,
    )
    model = model_class(config)
    assert not getattr(model.config, "layer_types", None) and model.config.sliding_window == 4
    add_fused_lm_head(model)
    model.eval()
    assert_same_logps_and_grads(model, random_examples(4, config.vocab_size))


def test_entropy_layout(tiny_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    examples = random_examples(5, model.config.vocab_size)
    out = listwise_forward(model, pack_shared_prompt(examples, pad_token_id=PAD))
    assert out.entropy.shape == out.per_token_logps.shape
    assert (out.entropy[out.completion_mask.bool()] > 0).all()
    assert (out.entropy[~out.completion_mask.bool()] == 0).all()
