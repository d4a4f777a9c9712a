"""RRHF and SLiC-HF trainers: reference-free, learn, log their terms, fail loudly. (PRO: test_pro_trainer.py.)"""

import math

import pytest
import torch
from conftest import cpu_config
from datasets import Dataset
from trl.trainer import dpo_trainer as dpo_trainer_module

from trl_rankalign import RRHFConfig, RRHFTrainer, SLiCConfig, SLiCTrainer
from trl_rankalign.tiny import tiny_ranked_dataset


TRAINERS = {
    "rrhf": (RRHFTrainer, RRHFConfig, {"rrhf_weight": 1.0}, "rrhf_loss"),
    "slic": (SLiCTrainer, SLiCConfig, {"margin": 1.0, "sft_weight": 0.1}, "slic_loss"),
}


@pytest.mark.parametrize("name", TRAINERS)
def test_learns_without_a_reference(tiny_path, tmp_path, monkeypatch, name):
    trainer_class, config_class, fields, term = TRAINERS[name]
    created = []
    original = dpo_trainer_module.create_model_from_path
    monkeypatch.setattr(
        dpo_trainer_module, "create_model_from_path", lambda *a, **k: created.append(1) or original(*a, **k)
    )
    args = cpu_config(config_class, tmp_path, max_steps=10, per_device_train_batch_size=8, **fields)
    trainer = trainer_class(model=tiny_path, args=args, train_dataset=tiny_ranked_dataset().select(range(8)))
    assert trainer.ref_model is None and len(created) == 1

    def no_reference(*args, **kwargs):
        raise AssertionError("reference-free trainers must not run a reference forward")

    monkeypatch.setattr(trainer, "compute_ref_log_probs", no_reference)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert history[-1]["loss"] < history[0]["loss"], [h["loss"] for h in history]
    for key in (term, "sft_loss", "rewards/margins", "ranking/pairwise_accuracy", "ranking/ndcg"):
        assert all(math.isfinite(h[key]) for h in history), key
    for n, p in trainer.model.named_parameters():
        assert not torch.equal(p, before[n]), f"{n} did not move"
    # A dataset passed to `evaluate` after training is prepared and evaluated (no reference log-probs are looked for)
    metrics = trainer.evaluate(tiny_ranked_dataset().select(range(8, 12)))
    assert math.isfinite(metrics["eval_loss"]) and f"eval_{term}" in metrics


@pytest.mark.parametrize("name", TRAINERS)
def test_bad_rows_and_options(tiny_path, tmp_path, name):
    trainer_class, config_class, _, _ = TRAINERS[name]
    rows = [
        {"prompt": "Review:", "completions": [" good", " bad"], "scores": [1.0, 0.0]},
        {"prompt": "Review:", "completions": [" good", " bad", " meh"], "scores": [1.0, 0.0]},
    ]
    with pytest.raises(ValueError, match="row 1, field 'scores'"):
        trainer_class(model=tiny_path, args=cpu_config(config_class, tmp_path), train_dataset=Dataset.from_list(rows))
    # No reference model: unset resolves to DPOTrainer's switch for holding none; an explicit False is kept (and
    # refused by the trainer without PEFT, see tests/test_seams.py), not silently overridden
    assert cpu_config(config_class, tmp_path).precompute_ref_log_probs
    assert not cpu_config(config_class, tmp_path, precompute_ref_log_probs=False).precompute_ref_log_probs
    with pytest.raises(ValueError, match="reference-free"):
        trainer_class(
            model=tiny_path,
            ref_model=torch.nn.Linear(1, 1),
            args=cpu_config(config_class, tmp_path),
            train_dataset=Dataset.from_list(rows[:1]),
        )
