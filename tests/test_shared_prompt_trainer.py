"""The shared-prompt forward inside the trainers: same loss and gradients as the unshared forward."""

import logging
import math
import re

import pytest
import torch
from conftest import cpu_config
from datasets import Dataset

from trl_rankalign import PROConfig, PROTrainer, RankDPOConfig, RankDPOTrainer
from trl_rankalign.data.collator import row_ref_logps
from trl_rankalign.ranked_preference_trainer import _decide_shared_prompt
from trl_rankalign.shared_prompt_attention import shared_prompt_attention_name
from trl_rankalign.tiny import tiny_ranked_dataset


def loss_and_grads(trainer, rows=4):
    trainer.model.train()
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(rows)]))
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("trainer_class, config_class", [(RankDPOTrainer, RankDPOConfig), (PROTrainer, PROConfig)])
def test_shared_equals_unshared(tiny_path, tmp_path, trainer_class, config_class):
    data = tiny_ranked_dataset().select(range(8))
    runs = {}
    for shared in (False, True):
        args = cpu_config(config_class, tmp_path / str(shared), shared_prompt_forward=shared)
        trainer = trainer_class(model=tiny_path, args=args, train_dataset=data)
        assert trainer.shared_prompt_forward is shared
        assert ("segment_ids" in trainer.data_collator([trainer.train_dataset[0]])) is shared
        runs[shared] = loss_and_grads(trainer)
    assert math.isclose(runs[True][0].item(), runs[False][0].item(), rel_tol=1e-5, abs_tol=1e-5)
    for name, grad in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_shared_with_lora_precompute_and_training(tiny_path, tmp_path):
    from peft import LoraConfig

    data = tiny_ranked_dataset().select(range(8))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    args = cpu_config(
        RankDPOConfig,
        tmp_path,
        shared_prompt_forward=True,
        precompute_ref_log_probs=True,
        max_steps=6,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
    )
    trainer = RankDPOTrainer(model=tiny_path, args=args, train_dataset=data, peft_config=lora)
    live = RankDPOTrainer(
        model=tiny_path, args=cpu_config(RankDPOConfig, tmp_path / "live"), train_dataset=data, peft_config=lora
    )
    batch = live.data_collator([live.train_dataset[i] for i in range(4)])
    live_ref = live.compute_ref_log_probs(live.model, batch)
    precomputed = torch.tensor([row_ref_logps(trainer.train_dataset[i])[0] for i in range(4)])
    torch.testing.assert_close(precomputed, live_ref[0], atol=1e-5, rtol=0)  # the top-ranked completions
    trainer.train()
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(math.isfinite(h["entropy"]) and h["entropy"] > 0 for h in history)


def test_auto_turns_on_where_sharing_saves_tokens(tiny_path, tmp_path, caplog):
    lists = tiny_ranked_dataset().select(range(8))  # ~7-token prompts, 5 completions of ~15 tokens: ~25% fewer tokens
    with caplog.at_level(logging.INFO, logger="trl_rankalign.ranked_preference_trainer"):
        trainer = RankDPOTrainer(model=tiny_path, args=cpu_config(RankDPOConfig, tmp_path / "s"), train_dataset=lists)
    assert trainer.shared_prompt_forward is True
    assert trainer.model.config._attn_implementation == "sdpa"  # switched only while train/evaluate/predict run
    said = [r.getMessage() for r in caplog.records if "shared_prompt_forward (auto) on" in r.getMessage()]
    assert len(said) == 1 and re.search(r"on for Qwen2ForCausalLM: \d+% fewer tokens", said[0]), said
    long_answers = lists.map(  # 2 completions of ~120 tokens behind the same prompts: ~3% fewer tokens
        lambda row: {"completions": [c * 8 for c in row["completions"][:2]], "scores": row["scores"][:2]}
    )
    trainer = RankDPOTrainer(
        model=tiny_path, args=cpu_config(RankDPOConfig, tmp_path / "l"), train_dataset=long_answers
    )
    assert trainer.shared_prompt_forward is False
    rows = Dataset.from_list([{"prompt_ids": [1] * 100, "completion_ids": [[2] * 10] * 4}])
    assert _decide_shared_prompt(rows, None) and not _decide_shared_prompt(rows, False)
    # The threshold (10%): K=2 and completions of 50 tokens; a prompt of 12 saves 13 of 124 tokens, one of 11 saves
    # 12 of 122
    at = Dataset.from_list([{"prompt_ids": [1] * 12, "completion_ids": [[2] * 50] * 2}])
    below = Dataset.from_list([{"prompt_ids": [1] * 11, "completion_ids": [[2] * 50] * 2}])
    assert _decide_shared_prompt(at, None) and not _decide_shared_prompt(below, None)


def test_keep_end_refuses_shared(tiny_path, tmp_path):
    with pytest.raises(ValueError, match="keep_start"):
        RankDPOTrainer(
            model=tiny_path,
            args=cpu_config(
                RankDPOConfig, tmp_path, shared_prompt_forward=True, truncation_mode="keep_end", max_length=64
            ),
            train_dataset=tiny_ranked_dataset().select(range(4)),
        )


def long_prompt_data(rows=4):
    data = tiny_ranked_dataset().select(range(rows))
    return data.map(lambda row: {"prompt": "Read the reviews of the pasta and the soup. " * 8 + row["prompt"]})


@pytest.fixture
def unsupported_tiny(tiny_path, tmp_path):
    """The tiny model saved with an attention implementation the shared-prompt attention does not run on."""
    from transformers import AttentionInterface, AutoModelForCausalLM
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    AttentionInterface.register("test_custom_attention", sdpa_attention_forward)
    model = AutoModelForCausalLM.from_pretrained(tiny_path, attn_implementation="test_custom_attention")
    assert model.config._attn_implementation == "test_custom_attention"
    return model


def test_trainer_switches_policy_and_reference(tiny_path, tmp_path):
    """With a separate reference model both run the shared-prompt attention while training (the names say over which
    base), and both have their own implementation back once `train` returns."""
    from transformers import AutoModelForCausalLM, TrainerCallback

    seen = []

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            seen.append((trainer.model.config._attn_implementation, trainer.ref_model.config._attn_implementation))

    ref_model = AutoModelForCausalLM.from_pretrained(tiny_path, attn_implementation="eager")
    args = cpu_config(RankDPOConfig, tmp_path, shared_prompt_forward=True)
    trainer = RankDPOTrainer(
        model=tiny_path, ref_model=ref_model, args=args, train_dataset=long_prompt_data(), callbacks=[Record()]
    )
    trainer.train()
    assert seen and set(seen) == {(shared_prompt_attention_name("sdpa"), shared_prompt_attention_name("eager"))}
    assert (trainer.model.config._attn_implementation, ref_model.config._attn_implementation) == ("sdpa", "eager")
    assert all(math.isfinite(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry)


def test_explicit_shared_prompt_refuses_a_model_it_cannot_run(unsupported_tiny, tmp_path):
    args = cpu_config(RankDPOConfig, tmp_path, shared_prompt_forward=True)
    with pytest.raises(ValueError, match="cannot run Qwen2ForCausalLM exactly: attn_implementation='test_custom_at"):
        RankDPOTrainer(model=unsupported_tiny, args=args, train_dataset=long_prompt_data())


def test_auto_falls_back_for_a_model_it_cannot_run(unsupported_tiny, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="trl_rankalign.ranked_preference_trainer"):
        trainer = RankDPOTrainer(
            model=unsupported_tiny, args=cpu_config(RankDPOConfig, tmp_path), train_dataset=long_prompt_data()
        )
    assert trainer.shared_prompt_forward is False
    assert "segment_ids" not in trainer.data_collator([trainer.train_dataset[0]])
    assert trainer.model.config._attn_implementation == "test_custom_attention"  # left as it was
    assert caplog.text.count("stays off for Qwen2ForCausalLM: attn_implementation='test_custom_attention'") == 1
