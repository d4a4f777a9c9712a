"""Where the package meets TRL, transformers and the user's objects (issue 23): nothing is left on the user's model,
the shared-prompt forward refuses families it cannot run, the reference is computed by the package's own forward,
reference-free trainers load no reference, and a user's `ref_logps` column gives one loss."""

import json
import logging
import math

import pytest
import torch
from conftest import cpu_config
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    FalconConfig,
    FalconForCausalLM,
    NemotronConfig,
    NemotronForCausalLM,
    StableLmConfig,
    StableLmForCausalLM,
)
from trl.trainer import dpo_trainer as dpo_trainer_module
from trl.trainer.utils import add_fused_lm_head

from trl_rankalign import PROConfig, PROTrainer, RankDPOConfig, RankDPOTrainer, RRHFConfig, RRHFTrainer
from trl_rankalign.forward import listwise_forward
from trl_rankalign.shared_prompt_attention import probe_shared_prompt_attention, shared_prompt_attention_support
from trl_rankalign.tiny import tiny_ranked_dataset


def long_prompt_data(rows=4):
    data = tiny_ranked_dataset().select(range(rows))
    return data.map(lambda row: {"prompt": "Read the reviews of the pasta and the soup. " * 4 + row["prompt"]})


# ------------------------------------------------------------------------- nothing stays on the user's model
def test_shared_prompt_train_evaluate_predict_leave_both_models_as_they_were(tiny_path, tmp_path):
    """After `train` (gradient checkpointing on, so the switch is held through the backward), `evaluate` and `predict`,
    the policy and the reference have their own attention back: `generate` runs, and a save/reload gives a model that
    scores exactly as the trained one, from a `config.json` that never names the package's attention."""
    ref_model = AutoModelForCausalLM.from_pretrained(tiny_path, attn_implementation="eager")
    args = cpu_config(RankDPOConfig, tmp_path / "run", shared_prompt_forward=True, gradient_checkpointing=True)
    data = long_prompt_data()
    trainer = RankDPOTrainer(model=tiny_path, ref_model=ref_model, args=args, train_dataset=data, eval_dataset=data)
    model = trainer.model
    own = ("sdpa", "eager")
    assert (model.config._attn_implementation, ref_model.config._attn_implementation) == own
    trainer.train()
    assert (model.config._attn_implementation, ref_model.config._attn_implementation) == own
    assert math.isfinite(trainer.evaluate()["eval_loss"])
    assert (model.config._attn_implementation, ref_model.config._attn_implementation) == own
    trainer.predict(trainer.eval_dataset)
    assert (model.config._attn_implementation, ref_model.config._attn_implementation) == own

    tokenizer = trainer.processing_class
    inputs = tokenizer(["The soup was"], return_tensors="pt")
    model.eval()
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        logits = model(**inputs).logits
    trainer.save_model(str(tmp_path / "saved"))
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert "rankalign" not in json.dumps(saved)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert reloaded.config._attn_implementation == "sdpa"
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, logits, atol=1e-5, rtol=0)
        assert torch.equal(reloaded.generate(**inputs, max_new_tokens=5, do_sample=False), generated)


def test_a_bare_shared_forward_sets_the_model_back(tiny_path):
    """Outside a trainer, `listwise_forward` switches the model for its one forward only."""
    from trl_rankalign.data.shared_prompt_collator import pack_shared_prompt

    model = AutoModelForCausalLM.from_pretrained(tiny_path, attn_implementation="eager")
    add_fused_lm_head(model)
    example = {"prompt_ids": [5, 6, 7], "completion_ids": [[8, 9], [10, 11, 12]], "scores": [1.0, 0.0]}
    batch = pack_shared_prompt([example], pad_token_id=0)
    out = listwise_forward(model, batch)
    assert torch.isfinite(out.logps).all()
    assert model.config._attn_implementation == "eager"
    # With gradient checkpointing the backward would recompute the layers after the switch is undone: it says so
    model.gradient_checkpointing_enable()
    model.train()
    with pytest.raises(RuntimeError, match="shared_prompt_attention_enabled"):
        listwise_forward(model, batch)
    assert model.config._attn_implementation == "eager"


# ------------------------------------------------------------------- families whose layers drop the layout
def tiny_family(family: str, vocab_size: int = 128):
    torch.manual_seed(0)
    common = dict(vocab_size=vocab_size, hidden_size=32, num_attention_heads=4, num_hidden_layers=2)
    if family == "falcon-rope":
        return FalconForCausalLM(FalconConfig(**common, alibi=False, attn_implementation="sdpa"))
    if family == "falcon-alibi":
        return FalconForCausalLM(FalconConfig(**common, alibi=True, attn_implementation="sdpa"))
    if family == "stablelm":
        config = StableLmConfig(**common, intermediate_size=64, num_key_value_heads=4, attn_implementation="sdpa")
        return StableLmForCausalLM(config)
    if family == "nemotron":
        config = NemotronConfig(**common, intermediate_size=64, num_key_value_heads=4, attn_implementation="sdpa")
        return NemotronForCausalLM(config)
    raise ValueError(family)


@pytest.mark.parametrize("family", ["falcon-rope", "falcon-alibi", "stablelm", "nemotron"])
def test_probe_refuses_families_whose_layers_drop_the_layout(family):
    """Falcon (RoPE and ALiBi), StableLM and Nemotron decoder layers call attention without the model's keyword
    arguments: the probe finds it (nothing is assumed from the family), and leaves the model as it was."""
    model = tiny_family(family)
    reasons = shared_prompt_attention_support(model)
    assert reasons and "probe" in reasons[0], reasons
    assert model.config._attn_implementation == "sdpa" and model.training


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layer", [0, -1])
def test_probe_catches_a_layer_that_silently_attends_across_completions(tiny_path, dtype, layer):
    """A layer that drops the layout and the mask (so no error is raised: plain causal attention over the packed row)
    is caught, in bfloat16 too, where its log-prob difference is inside the dtype's tolerance: the layers that called
    the shared-prompt attention are counted."""
    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=dtype)

    def drop_layout(module, args, kwargs):
        kwargs.pop("shared_prompt_layout", None)
        return args, {**kwargs, "attention_mask": None}

    handle = model.model.layers[layer].register_forward_pre_hook(drop_layout, with_kwargs=True)
    reasons = probe_shared_prompt_attention(model)
    handle.remove()
    assert len(reasons) == 1 and "does not hand the layout to attention" in reasons[0], reasons


def test_probe_passes_a_family_it_runs(tiny_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    assert probe_shared_prompt_attention(model) == []
    assert model.config._attn_implementation == "sdpa"


def test_trainer_refuses_or_falls_back_for_falcon(tiny_path, tmp_path, caplog):
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    data = long_prompt_data()
    forced = cpu_config(RankDPOConfig, tmp_path / "forced", shared_prompt_forward=True)
    with pytest.raises(ValueError, match="cannot run FalconForCausalLM exactly: a probe forward"):
        RankDPOTrainer(
            tiny_family("falcon-rope", len(tokenizer)),
            ref_model=tiny_family("falcon-rope", len(tokenizer)),
            args=forced,
            train_dataset=data,
            processing_class=tokenizer,
        )
    with caplog.at_level(logging.WARNING, logger="trl_rankalign.ranked_preference_trainer"):
        trainer = RankDPOTrainer(
            tiny_family("falcon-rope", len(tokenizer)),
            ref_model=tiny_family("falcon-rope", len(tokenizer)),
            args=cpu_config(RankDPOConfig, tmp_path / "auto", max_steps=1),
            train_dataset=data,
            processing_class=tokenizer,
        )
    assert trainer.shared_prompt_forward is False
    assert caplog.text.count("shared_prompt_forward (auto) stays off for FalconForCausalLM") == 1
    assert math.isfinite(trainer.train().training_loss)  # the unshared forward runs it


# ------------------------------------------------------------------------- the reference, own forward
@pytest.mark.parametrize("shared_prompt_forward", [False, True])
def test_precomputed_reference_is_the_base_model_without_the_adapter(
    tiny_path, tmp_path, monkeypatch, shared_prompt_forward
):
    """TRL's precompute path, run with the package's own forward (TRL's `compute_ref_log_probs` body is never used):
    the stored reference log-probs are those of the base model loaded without any adapter (a live forward here), and
    differ from the adapter's (a non-zero LoRA B), so a reference that kept the adapter, or came out as zeros, fails."""
    from peft import LoraConfig

    def not_trls_body(*args, **kwargs):
        raise AssertionError("the reference must not depend on the body of DPOTrainer.compute_ref_log_probs")

    monkeypatch.setattr(dpo_trainer_module.DPOTrainer, "compute_ref_log_probs", not_trls_body)

    data = tiny_ranked_dataset().select(range(6))
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
    args = cpu_config(
        RankDPOConfig, tmp_path, precompute_ref_log_probs=True, shared_prompt_forward=shared_prompt_forward
    )
    trainer = RankDPOTrainer(model=tiny_path, args=args, train_dataset=data, peft_config=lora)
    examples = [trainer.train_dataset[i] for i in range(6)]
    batch = trainer.data_collator(examples)
    stored = batch["ref_logps"]  # (B, K) from TRL's cached columns
    base = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    add_fused_lm_head(base)
    with torch.no_grad():
        expected = listwise_forward(base, batch).logps
        with_adapter = listwise_forward(trainer.model, batch).logps
    mask = batch["list_mask"]
    torch.testing.assert_close(stored[mask], expected[mask], atol=1e-4, rtol=0)
    assert (with_adapter - expected)[mask].abs().max() > 1e-2
    assert (stored[mask] < -1).all()


# ------------------------------------------------------------------------- reference-free: nothing loaded
def count_loads_and_hashes(monkeypatch):
    counts = {"loads": 0, "hashes": 0}
    load, hash_ = dpo_trainer_module.create_model_from_path, dpo_trainer_module.hash_module

    def counting_load(*args, **kwargs):
        counts["loads"] += 1
        return load(*args, **kwargs)

    def counting_hash(module):
        counts["hashes"] += 1
        return hash_(module)

    monkeypatch.setattr(dpo_trainer_module, "create_model_from_path", counting_load)
    monkeypatch.setattr(dpo_trainer_module, "hash_module", counting_hash)
    return counts


@pytest.mark.parametrize("trainer_class, config_class", [(PROTrainer, PROConfig), (RRHFTrainer, RRHFConfig)])
def test_reference_free_loads_no_reference(tiny_path, tmp_path, monkeypatch, trainer_class, config_class):
    """One model load (the policy) and no reference: by default, and with PEFT and `precompute_ref_log_probs=False`
    (then nothing is hashed either). An explicit `False` without PEFT is refused instead of silently overridden."""
    from peft import LoraConfig

    data = tiny_ranked_dataset().select(range(4))
    counts = count_loads_and_hashes(monkeypatch)
    trainer = trainer_class(model=tiny_path, args=cpu_config(config_class, tmp_path / "a"), train_dataset=data)
    assert trainer.ref_model is None and counts["loads"] == 1
    assert "ref_chosen_logps" not in trainer.train_dataset.column_names

    counts.update(loads=0, hashes=0)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    args = cpu_config(config_class, tmp_path / "b", precompute_ref_log_probs=False)
    trainer = trainer_class(model=tiny_path, args=args, train_dataset=data, peft_config=lora)
    assert trainer.ref_model is None and counts == {"loads": 1, "hashes": 0}
    assert math.isfinite(trainer.train().training_loss)

    counts.update(loads=0, hashes=0)
    with pytest.raises(ValueError, match="precompute_ref_log_probs=False without PEFT"):
        trainer_class(
            model=tiny_path,
            args=cpu_config(config_class, tmp_path / "c", precompute_ref_log_probs=False),
            train_dataset=data,
        )
    assert counts["loads"] == 0


# ------------------------------------------------------------------------- the user's ref_logps column
def test_a_ref_logps_column_gives_one_loss_whatever_precompute_says(tiny_path, tmp_path):
    """The user's `ref_logps` always win: the same loss with `precompute_ref_log_probs` off and on (nothing is
    precomputed for it), and not the loss of the live reference. In a text dataset they follow their completions when
    the list is sorted best first."""
    rows = tiny_ranked_dataset().select(range(4)).to_list()
    for i, row in enumerate(rows):
        row["ref_logps"] = [-10.0 - 3 * i - 7 * k for k in range(len(row["completions"]))]
    data = Dataset.from_list(rows)
    losses = {}
    for precompute in (False, True):
        args = cpu_config(RankDPOConfig, tmp_path / str(precompute), precompute_ref_log_probs=precompute)
        trainer = RankDPOTrainer(model=tiny_path, args=args, train_dataset=data)
        assert "ref_chosen_logps" not in trainer.train_dataset.column_names
        batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
        losses[precompute] = trainer.compute_loss(trainer.model, batch).item()
        if not precompute:
            live = RankDPOTrainer(model=tiny_path, args=args, train_dataset=data.remove_columns("ref_logps"))
            live_batch = live._prepare_inputs(live.data_collator([live.train_dataset[i] for i in range(4)]))
            live_loss = live.compute_loss(live.model, live_batch).item()
    assert losses[False] == pytest.approx(losses[True], abs=1e-6)
    assert abs(losses[False] - live_loss) > 1e-2
    first = trainer.train_dataset[0]
    order = sorted(range(len(rows[0]["scores"])), key=lambda k: -rows[0]["scores"][k])
    assert first["ref_logps"] == [rows[0]["ref_logps"][k] for k in order]


# ------------------------------------------------------------------------- what the package relies on in TRL
def test_the_private_state_of_dpotrainer_we_rely_on(tiny_path, tmp_path):
    """The TRL internals the trainer still touches, each in one named place: the hooks it overrides exist on
    DPOTrainer under these names (a rename would silently skip the override), `log` averages the lists that
    `_trl_metrics` returns, and `_count_train_tokens` adds to DPOTrainer's count."""
    for hook in (
        "_prepare_dataset",
        "_precompute_ref_logps",
        "compute_ref_log_probs",
        "_compute_loss",
        "_set_signature_columns_if_needed",
    ):
        assert callable(getattr(dpo_trainer_module.DPOTrainer, hook, None)), hook
    trainer = RankDPOTrainer(
        model=tiny_path, args=cpu_config(RankDPOConfig, tmp_path), train_dataset=tiny_ranked_dataset().select(range(4))
    )
    assert trainer._is_vision_dataset is False and trainer._tp_size == 1
    trainer.model.train()
    trainer._trl_metrics("train")["seam_probe"] += [1.0, 3.0]
    assert trainer._count_train_tokens(10) == 10 == trainer._total_train_tokens
    trainer.log({})
    assert trainer.state.log_history[-1]["seam_probe"] == 2.0
    assert not trainer._trl_metrics("train")  # cleared by TRL's log
