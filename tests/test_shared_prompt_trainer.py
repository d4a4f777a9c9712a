"""The shared-prompt forward inside the trainers: same loss and gradients as the unshared forward."""

import math

import pytest
import torch
from conftest import cpu_config
from datasets import Dataset

from trl_rankalign import PROConfig, PROTrainer, RankDPOConfig, RankDPOTrainer
from trl_rankalign.data.collator import row_ref_logps
from trl_rankalign.ranked_preference_trainer import _decide_shared_prompt
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


def test_auto_turns_on_for_long_prompts_only(tiny_path, tmp_path):
    short = tiny_ranked_dataset().select(range(8))  # ~6-token prompts, ~15-token completions
    trainer = RankDPOTrainer(model=tiny_path, args=cpu_config(RankDPOConfig, tmp_path / "s"), train_dataset=short)
    assert trainer.shared_prompt_forward is False
    long_prompt = short.map(lambda row: {"prompt": "Read the reviews of the pasta and the soup. " * 8 + row["prompt"]})
    trainer = RankDPOTrainer(
        model=tiny_path, args=cpu_config(RankDPOConfig, tmp_path / "l"), train_dataset=long_prompt
    )
    assert trainer.shared_prompt_forward is True
    rows = Dataset.from_list([{"prompt_ids": [1] * 100, "completion_ids": [[2] * 10] * 4}])
    assert _decide_shared_prompt(rows, None) and not _decide_shared_prompt(rows, False)


def test_keep_end_refuses_shared(tiny_path, tmp_path):
    with pytest.raises(ValueError, match="keep_start"):
        RankDPOTrainer(
            model=tiny_path,
            args=cpu_config(
                RankDPOConfig, tmp_path, shared_prompt_forward=True, truncation_mode="keep_end", max_length=64
            ),
            train_dataset=tiny_ranked_dataset().select(range(4)),
        )


def test_auto_falls_back_for_a_model_it_cannot_run(tiny_path, tmp_path):
    long_prompt = tiny_ranked_dataset().select(range(4))
    long_prompt = long_prompt.map(
        lambda row: {"prompt": "Read the reviews of the pasta and the soup. " * 8 + row["prompt"]}
    )
    trainer = RankDPOTrainer(model=tiny_path, args=cpu_config(RankDPOConfig, tmp_path), train_dataset=long_prompt)
    assert trainer.shared_prompt_forward is True
    trainer.model.config._attn_implementation = "flash_attention_2"  # no dense 4-D mask there
    trainer._shared_prompt_model_check()
    assert trainer.shared_prompt_forward is False
