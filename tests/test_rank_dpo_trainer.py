import json
import logging
import math

import pytest
import torch
from conftest import cpu_config
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from trl_rankalign import RankDPOConfig, RankDPOTrainer
from trl_rankalign.data.collator import row_ref_logps
from trl_rankalign.tiny import tiny_ranked_dataset


RANKING_KEYS = [
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "rewards/rank_1",
    "rewards/rank_2",
    "rewards/adjacent_margin",
    "ranking/pairwise_accuracy",
    "ranking/kendall_tau",
    "ranking/ndcg",
    "logps/chosen",
    "logps/rejected",
    "entropy",
]


def strict_pairs(num_rows=8):
    """Best vs worst of the first lists of the shipped data whose extremes are not tied."""
    rows = []
    for row in tiny_ranked_dataset():
        best = max(range(len(row["scores"])), key=lambda k: row["scores"][k])
        worst = min(range(len(row["scores"])), key=lambda k: row["scores"][k])
        if row["scores"][best] > row["scores"][worst]:
            rows.append(
                {"prompt": row["prompt"], "chosen": row["completions"][best], "rejected": row["completions"][worst]}
            )
        if len(rows) == num_rows:
            return rows
    raise AssertionError("not enough untied lists")


def loss_and_grads(trainer):
    trainer.model.train()
    examples = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer._prepare_inputs(trainer.data_collator(examples))
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def test_k2_equals_trl_sigmoid_dpo(tiny_path, tmp_path):
    pairs = Dataset.from_list(strict_pairs())
    ranked = Dataset.from_list(
        [{"prompt": r["prompt"], "completions": [r["chosen"], r["rejected"]], "scores": [1.0, 0.0]} for r in pairs]
    )
    dpo = DPOTrainer(
        model=tiny_path, args=cpu_config(DPOConfig, tmp_path / "dpo", loss_type="sigmoid"), train_dataset=pairs
    )
    rank = RankDPOTrainer(model=tiny_path, args=cpu_config(RankDPOConfig, tmp_path / "rank"), train_dataset=ranked)
    dpo_loss, dpo_grads = loss_and_grads(dpo)
    rank_loss, rank_grads = loss_and_grads(rank)
    assert math.isclose(dpo_loss.item(), rank_loss.item(), abs_tol=1e-6)
    assert dpo_grads.keys() == rank_grads.keys() and len(dpo_grads) > 0
    for name, grad in dpo_grads.items():
        torch.testing.assert_close(rank_grads[name], grad, atol=1e-6, rtol=0, msg=name)
    # Plain pairwise data is accepted too, and gives the same loss
    from_pairs = RankDPOTrainer(model=tiny_path, args=cpu_config(RankDPOConfig, tmp_path / "p"), train_dataset=pairs)
    assert math.isclose(loss_and_grads(from_pairs)[0].item(), dpo_loss.item(), abs_tol=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"rank_loss": "lipo"}, {"ties": "breslow"}, {"ties": "ordered"}],
    ids=["plackett_luce-efron", "lipo", "breslow", "ordered"],
)
def test_training_learns_and_logs(tiny_path, tmp_path, overrides):
    data = tiny_ranked_dataset().select(range(8))
    args = cpu_config(RankDPOConfig, tmp_path, max_steps=12, per_device_train_batch_size=8, beta=0.5, **overrides)
    trainer = RankDPOTrainer(model=tiny_path, args=args, train_dataset=data)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert history[-1]["loss"] < history[0]["loss"], [h["loss"] for h in history]
    for key in RANKING_KEYS:
        # Kendall's tau is undefined while all implicit rewards are still tied (0 at step 1): logged from step 2
        values = [h[key] for h in history if key in h]
        assert len(values) >= len(history) - 1 and all(math.isfinite(v) for v in values), key
    for name, param in trainer.model.named_parameters():
        assert not torch.equal(param, before[name]), f"{name} did not move"
    assert trainer.ref_model is not None  # full fine-tuning keeps a frozen reference copy


def test_lora_uses_adapter_free_reference(tiny_path, tmp_path):
    from peft import LoraConfig

    data = tiny_ranked_dataset().select(range(8))
    args = cpu_config(RankDPOConfig, tmp_path, max_steps=8, per_device_train_batch_size=8, learning_rate=1e-2)
    peft_config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = RankDPOTrainer(model=tiny_path, args=args, train_dataset=data, peft_config=peft_config)
    assert trainer.ref_model is None
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert history[-1]["loss"] < history[0]["loss"]
    for name, param in trainer.model.named_parameters():
        moved = not torch.equal(param, before[name])
        assert moved == ("lora_" in name), name  # adapters move, the frozen base does not


def test_precomputed_reference_equals_on_the_fly(tiny_path, tmp_path):
    data = tiny_ranked_dataset().select(range(8))
    live = RankDPOTrainer(model=tiny_path, args=cpu_config(RankDPOConfig, tmp_path / "a"), train_dataset=data)
    pre = RankDPOTrainer(
        model=tiny_path,
        args=cpu_config(RankDPOConfig, tmp_path / "b", precompute_ref_log_probs=True),
        train_dataset=data,
    )
    # TRL's own precompute and cache, with TRL's columns: the top completion, then the others (padded to the longest K)
    assert pre.ref_model is None
    assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(pre.train_dataset.column_names)
    longest = max(len(s) for s in data["scores"])
    assert all(len(r) == longest - 1 for r in pre.train_dataset["ref_rejected_logps"])
    assert [len(row_ref_logps(row)) for row in pre.train_dataset] == [len(s) for s in data["scores"]]
    live_loss, live_grads = loss_and_grads(live)
    pre_loss, pre_grads = loss_and_grads(pre)
    assert math.isclose(live_loss.item(), pre_loss.item(), abs_tol=1e-6)
    for name, grad in live_grads.items():
        torch.testing.assert_close(pre_grads[name], grad, atol=1e-6, rtol=0)


def test_conversational_eval_checkpoint_resume_and_model_card(tiny_path, tmp_path):
    rows = tiny_ranked_dataset().select(range(12))
    chat = rows.map(
        lambda r: {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "completions": [[{"role": "assistant", "content": c.strip()}] for c in r["completions"]],
        }
    )
    args = cpu_config(
        RankDPOConfig, tmp_path, max_steps=4, save_strategy="steps", save_steps=2, eval_strategy="steps", eval_steps=2
    )
    trainer = RankDPOTrainer(model=tiny_path, args=args, train_dataset=chat, eval_dataset=chat.select(range(4)))
    trainer.train()
    metrics = trainer.evaluate()
    for key in ("eval_loss", "eval_rewards/margins", "eval_ranking/kendall_tau", "eval_ranking/ndcg"):
        assert math.isfinite(metrics[key]), key
    assert (tmp_path / "checkpoint-2").is_dir() and (tmp_path / "checkpoint-4").is_dir()
    card = (tmp_path / "README.md").read_text()
    assert "rank-dpo" in card and "RankDPO" in card and "2305.18290" in card

    resumed = RankDPOTrainer(
        model=tiny_path, args=cpu_config(RankDPOConfig, tmp_path, max_steps=6, save_strategy="no"), train_dataset=chat
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    steps = [entry["step"] for entry in resumed.state.log_history if "loss" in entry]
    assert steps == [1, 2, 3, 4, 5, 6] and resumed.state.global_step == 6  # history restored, then steps 5 and 6
    state = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    assert any("rewards/margins" in entry for entry in state["log_history"])


@pytest.mark.parametrize(
    "row, match",
    [
        ({"prompt": "Review:", "completions": [" good", " bad"], "scores": [1.0]}, "row 1, field 'scores'"),
        ({"prompt": "Review:", "completions": [" good"], "scores": [1.0]}, "row 1, field 'completions'.*K >= 2"),
        (
            {"prompt": "Review:", "completions": [" a", " b"], "scores": [1.0, float("nan")]},
            "row 1, field 'scores\\[1\\]'",
        ),
    ],
)
def test_bad_rows_fail_loudly_before_training(tiny_path, tmp_path, row, match):
    good = {"prompt": "Review:", "completions": [" good", " bad"], "scores": [1.0, 0.0]}
    with pytest.raises(ValueError, match=match):
        RankDPOTrainer(
            model=tiny_path, args=cpu_config(RankDPOConfig, tmp_path), train_dataset=Dataset.from_list([good, row])
        )


def test_lists_whose_prompt_fills_max_length_are_dropped_and_counted(tiny_path, tmp_path, caplog):
    """As TRL's DPO: a prompt of >= max_length tokens leaves nothing to learn; the list is dropped, the count logged at
    WARNING; a split left empty fails loudly."""
    long = {"prompt": "Review of the pasta: " * 20, "completions": [" good", " bad"], "scores": [1.0, 0.0]}
    short = {"prompt": "Pasta:", "completions": [" good", " bad"], "scores": [1.0, 0.0]}
    with caplog.at_level(logging.WARNING, logger="trl_rankalign.ranked_preference_trainer"):
        trainer = RankDPOTrainer(
            model=tiny_path,
            args=cpu_config(RankDPOConfig, tmp_path, max_length=16),
            train_dataset=Dataset.from_list([long, short, long]),
        )
    assert len(trainer.train_dataset) == 1
    assert "Dropped 2 of 3 train lists" in caplog.text
    with pytest.raises(ValueError, match="train .*dataset is empty"):
        RankDPOTrainer(
            model=tiny_path,
            args=cpu_config(RankDPOConfig, tmp_path, max_length=16),
            train_dataset=Dataset.from_list([long]),
        )


def test_config_rejects_pairwise_only_options(tmp_path):
    with pytest.raises(ValueError, match="loss_type"):
        cpu_config(RankDPOConfig, tmp_path, loss_type=["ipo"])
    with pytest.raises(ValueError, match="use_weighting"):
        cpu_config(RankDPOConfig, tmp_path, use_weighting=True)
    with pytest.raises(ValueError, match="ties"):
        cpu_config(RankDPOConfig, tmp_path, ties="random")
    with pytest.raises(ValueError, match="rank_loss"):
        cpu_config(RankDPOConfig, tmp_path, rank_loss="listmle")


def test_precomputed_reference_on_pretokenised_unsorted_lists(tiny_path, tmp_path):
    """A dataset tokenised by the user may list completions in any order; the stored reference log-probs must follow
    the completions they belong to.
    (Lists without ties, so that reversing a list and sorting it again gives back the same order.)"""
    data = tiny_ranked_dataset().filter(lambda r: len(set(r["scores"])) == len(r["scores"])).select(range(6))
    live = RankDPOTrainer(model=tiny_path, args=cpu_config(RankDPOConfig, tmp_path / "a"), train_dataset=data)
    # Reverse each tokenised list (now worst first) and hand it back as a pre-tokenised dataset
    reversed_rows = live.train_dataset.map(
        lambda r: {"completion_ids": r["completion_ids"][::-1], "scores": r["scores"][::-1]},
        remove_columns=["prompt", "completions"],
    )
    pre = RankDPOTrainer(
        model=tiny_path,
        args=cpu_config(RankDPOConfig, tmp_path / "b", precompute_ref_log_probs=True),
        train_dataset=reversed_rows,
    )
    examples = [pre.train_dataset[i] for i in range(4)]
    batch = pre.data_collator(examples)
    expected = live.compute_ref_log_probs(
        live.ref_model, live.data_collator([live.train_dataset[i] for i in range(4)])
    )
    torch.testing.assert_close(
        batch["ref_logps"], torch.cat([expected[0][:, None], expected[1]], dim=1), atol=1e-5, rtol=0
    )


def test_pretokenised_rows_are_validated(tiny_path, tmp_path):
    """Pre-tokenised rows skip tokenisation, not validation: a NaN score would otherwise train with loss 0."""
    rows = [
        {"prompt_ids": [5, 6], "completion_ids": [[7, 8], [9]], "scores": [1.0, 0.0]},
        {"prompt_ids": [5, 6], "completion_ids": [[7, 8], [9]], "scores": [1.0, float("nan")]},
    ]
    with pytest.raises(ValueError, match=r"row 1, field 'scores\[1\]'"):
        RankDPOTrainer(tiny_path, args=cpu_config(RankDPOConfig, tmp_path), train_dataset=Dataset.from_list(rows))


def test_empty_dataset_fails_with_a_message(tiny_path, tmp_path):
    empty = Dataset.from_dict({"prompt": [], "completions": [], "scores": []})
    with pytest.raises(ValueError, match="The train dataset is empty"):
        RankDPOTrainer(tiny_path, args=cpu_config(RankDPOConfig, tmp_path), train_dataset=empty)
