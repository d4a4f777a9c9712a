"""The shared-prompt forward on a CUDA device, in bf16: `pytest -m gpu tests/test_gpu.py` (excluded by default).

Each backend the shared-prompt attention runs on a GPU (sdpa; flash-attention-2 when `flash_attn` is installed;
FlexAttention, compiled) against the unshared forward of the same weights in bf16, with a per-layer sliding window
shorter than the sequences, padding, mixed lengths and padded list slots; then one training step of `RankDPOTrainer`.
"""

import pytest
import torch
from test_shared_prompt import build_family, random_examples


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def flash_attention_installed() -> bool:
    from transformers.utils import is_flash_attn_2_available

    return is_flash_attn_2_available()


BACKENDS = [
    "sdpa",
    pytest.param(
        "flash_attention_2",
        marks=pytest.mark.skipif(not flash_attention_installed(), reason="flash_attn is not installed"),
    ),
    "flex_attention",
]


def bf16_model(family: str, attn_implementation: str):
    return build_family(family, attn_implementation, dtype=torch.bfloat16).cuda()


@pytest.mark.parametrize("attn_implementation", BACKENDS)
@pytest.mark.parametrize("family", ["qwen2", "mistral", "gemma3"])
def test_bf16_matches_unshared_on_gpu(family, attn_implementation):
    from trl_rankalign.data.collator import DataCollatorForRankedPreference
    from trl_rankalign.data.shared_prompt_collator import pack_shared_prompt
    from trl_rankalign.forward import listwise_forward

    model = bf16_model(family, attn_implementation)
    model.train()  # gradients flow; attention dropout is 0 in these configs
    examples = random_examples(6, model.config.vocab_size, num_prompts=4)
    params = [p for p in model.parameters() if p.requires_grad]
    weights = torch.randn(len(examples), max(len(e["completion_ids"]) for e in examples), device="cuda")

    unshared = DataCollatorForRankedPreference(pad_token_id=0)(examples)
    unshared = {key: value.cuda() for key, value in unshared.items()}
    unshared_out = listwise_forward(model, unshared)
    shared = {key: value.cuda() for key, value in pack_shared_prompt(examples, pad_token_id=0).items()}
    shared_out = listwise_forward(model, shared)
    grads = []
    for out in (unshared_out, shared_out):
        loss = (weights * out.logps.float()).sum()
        grads.append(torch.autograd.grad(loss, params))

    torch.testing.assert_close(shared_out.logps.float(), unshared_out.logps.float(), atol=5e-2, rtol=1.6e-2)
    for unshared_grad, shared_grad in zip(*grads):
        scale = unshared_grad.float().abs().max().clamp(min=1e-3)
        assert (shared_grad.float() - unshared_grad.float()).abs().max() / scale < 5e-2


def test_fp32_sdpa_matches_unshared_on_gpu_exactly():
    from trl_rankalign.data.collator import DataCollatorForRankedPreference
    from trl_rankalign.data.shared_prompt_collator import pack_shared_prompt
    from trl_rankalign.forward import listwise_forward

    model = build_family("qwen2", "sdpa").cuda()
    model.eval()
    examples = random_examples(7, model.config.vocab_size)

    unshared = {k: v.cuda() for k, v in DataCollatorForRankedPreference(pad_token_id=0)(examples).items()}
    shared = {k: v.cuda() for k, v in pack_shared_prompt(examples, pad_token_id=0).items()}
    with torch.no_grad():
        torch.testing.assert_close(
            listwise_forward(model, shared).logps, listwise_forward(model, unshared).logps, atol=1e-4, rtol=0
        )


def test_trainer_step_on_gpu(tiny_path, tmp_path):
    from conftest import cpu_config

    from trl_rankalign import RankDPOConfig, RankDPOTrainer
    from trl_rankalign.tiny import tiny_ranked_dataset

    args = cpu_config(RankDPOConfig, tmp_path, shared_prompt_forward=True, use_cpu=False, bf16=True, max_steps=2)
    trainer = RankDPOTrainer(model=tiny_path, args=args, train_dataset=tiny_ranked_dataset().select(range(8)))
    assert next(trainer.model.parameters()).is_cuda
    trainer.train()
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.log_history if "loss" in e)
