"""Online listwise alignment (`train_iterative`, the `iterate` stage): learns, reports per round, resumes, redoes a
round whose settings changed, counts unusable samples and stops when a round has nothing to train on."""

import json
import math

import pytest
import torch
from conftest import cpu_config
from transformers import AutoModelForCausalLM

from trl_rankalign.cli import main as cli
from trl_rankalign.iterative import IterativeConfig, build_lists, load_round_lists, round_prompts, train_iterative
from trl_rankalign.sampling import generation
from trl_rankalign.tiny import tiny_prompt_dataset
from trl_rankalign.tiny.language import reward_fn, true_reward


PROMPTS = tiny_prompt_dataset()["prompt"][:8]


def config(tmp_path, **overrides):
    fields = dict(num_rounds=2, num_samples=4, max_new_tokens=12, sampling_batch_size=8, max_steps=3, beta=0.1)
    fields.update(overrides)
    return cpu_config(IterativeConfig, tmp_path, per_device_train_batch_size=4, **fields)


def rounds(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]


def test_learns_and_reports_every_round(tiny_path, tmp_path):
    model = train_iterative(tiny_path, PROMPTS, config(tmp_path), reward=reward_fn)
    history = rounds(tmp_path)
    assert [r["round"] for r in history] == [0, 1]
    for r in history:
        assert r["samples"] == 4 * len(PROMPTS) and r["lists"] > 0 and math.isfinite(r["mean_reward"])
        assert r["lists"] + r["fully_tied"] + r["too_few_completions"] == len(PROMPTS)
        assert len(r["train_loss"]) == 3
    assert history[0]["kl_to_sft"] == pytest.approx(0.0, abs=1e-4)  # round 0 samples the SFT policy itself
    assert history[1]["kl_to_sft"] != pytest.approx(0.0, abs=1e-4)
    sft = AutoModelForCausalLM.from_pretrained(tiny_path)
    moved = [not torch.equal(p, q) for p, q in zip(model.parameters(), sft.parameters())]
    assert all(moved)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path)  # the final policy at the top of output_dir
    assert all(torch.equal(p, q) for p, q in zip(saved.parameters(), model.parameters()))
    lists = load_round_lists(str(tmp_path), 1)
    for row in lists:  # fresh lists, scored by the reward
        assert row["scores"] == [true_reward(c) for c in row["completions"]]


def test_resumes_and_redoes_a_round_whose_settings_changed(tiny_path, tmp_path, monkeypatch):
    calls = []
    original = generation.generate_completions
    monkeypatch.setattr(
        generation, "generate_completions", lambda *a, **k: calls.append(len(a[2])) or original(*a, **k)
    )
    train_iterative(tiny_path, PROMPTS, config(tmp_path, num_rounds=1), reward=reward_fn)
    assert len(calls) == 1
    first = (tmp_path / "round_0" / "samples.jsonl").read_text()

    calls.clear()  # one more round: round 0 is loaded, only round 1 samples
    train_iterative(tiny_path, PROMPTS, config(tmp_path, num_rounds=2), reward=reward_fn)
    assert len(calls) == 1 and (tmp_path / "round_0" / "samples.jsonl").read_text() == first
    assert [r["round"] for r in rounds(tmp_path)] == [0, 1]

    calls.clear()  # a setting that changes round 0 (the sampling length) redoes both rounds
    train_iterative(tiny_path, PROMPTS, config(tmp_path, num_rounds=2, max_new_tokens=8), reward=reward_fn)
    assert len(calls) == 2 and (tmp_path / "round_0" / "samples.jsonl").read_text() != first
    assert [r["round"] for r in rounds(tmp_path)] == [0, 1]

    calls.clear()  # so does another reward (its code is part of the settings); its samples stay valid: rescored only
    train_iterative(
        tiny_path,
        PROMPTS,
        config(tmp_path, num_rounds=1, max_new_tokens=8),
        reward=lambda p, c: [float(len(x)) for x in c],
    )
    assert len(calls) == 0
    assert all(row["scores"] == [float(len(c)) for c in row["completions"]] for row in load_round_lists(tmp_path, 0))


@pytest.mark.parametrize(
    "overrides",
    [dict(method="lipo"), dict(method="pro"), dict(method="dpo"), dict(select="rso", num_accepted=2, rso_beta=0.5)],
    ids=["lipo", "pro", "dpo", "rso"],
)
def test_methods_and_rso_selection(tiny_path, tmp_path, overrides):
    train_iterative(tiny_path, PROMPTS, config(tmp_path, num_rounds=1, **overrides), reward=reward_fn)
    (history,) = rounds(tmp_path)
    lists = load_round_lists(str(tmp_path), 0)
    if overrides.get("method") == "dpo":  # best against worst
        assert all(len(s) == 2 and s[0] == max(s) and s[1] == min(s) for s in lists["scores"])
    if overrides.get("select") == "rso":
        assert all(len(s) <= 2 for s in lists["scores"])
        assert 0 < history["acceptance_rate"] <= 1
    if overrides.get("method") == "pro":
        assert "kl_to_sft" in history  # measured against the SFT policy even though PRO has no reference


def test_unusable_samples_are_counted_and_a_round_without_lists_stops():
    args = IterativeConfig("unused", num_samples=4, bf16=False, use_cpu=True, report_to="none")
    rows = [
        {"index": 0, "prompt": "a", "completions": [" x", " y", "  ", " z"], "scores": [1.0, math.nan, 2.0, 0.0]},
        {"index": 1, "prompt": "b", "completions": [" x", " y", " w", " z"], "scores": [1.0, 1.0, 1.0, 1.0]},
        {"index": 2, "prompt": "c", "completions": [" x", " y", " w", " z"], "scores": [math.nan] * 3 + [1.0]},
    ]
    lists, counts = build_lists(rows, args, seed=0)
    assert lists == [{"prompt": "a", "completions": [" x", " z"], "scores": [1.0, 0.0]}]
    assert counts == {
        "samples": 12,
        "empty_completions": 1,
        "nonfinite_rewards": 4,
        "too_few_completions": 1,
        "fully_tied": 1,
        "fully_tied_kept": 0,
        "accepted": 0,
        "lists": 1,
    }


def test_a_round_where_every_list_is_unusable_fails_loudly(tiny_path, tmp_path):
    with pytest.raises(ValueError, match="Iterative round 0: no usable list .*fully_tied"):
        train_iterative(tiny_path, PROMPTS, config(tmp_path, num_rounds=1), reward=lambda p, c: [1.0] * len(c))
    with pytest.raises(ValueError, match="no usable list .*nonfinite_rewards"):
        train_iterative(
            tiny_path, PROMPTS, config(tmp_path / "nan", num_rounds=1), reward=lambda p, c: [math.nan] * len(c)
        )


def test_config_and_prompt_rounds(tmp_path):
    with pytest.raises(ValueError, match="method"):
        config(tmp_path, method="ppo")
    with pytest.raises(ValueError, match="num_accepted"):
        config(tmp_path, select="rso", num_accepted=9)
    with pytest.raises(ValueError, match="reference-free"):
        config(tmp_path, method="pro", reference="previous")
    assert config(tmp_path, num_samples=6).num_accepted == 3
    with pytest.raises(ValueError, match="fixed served weights"):
        config(
            tmp_path, generation_backend="server", generation_base_url="http://127.0.0.1:1/v1", generation_model="m"
        )
    assert round_prompts(list("abcde"), 1, 3) == ["d", "e", "a"]
    assert round_prompts(list("abc"), 4, None) == ["a", "b", "c"]


def test_reference_previous_and_the_stage(tiny_path, tmp_path):
    """The `iterate` stage from the tiny recipe, with the previous round's policy as reference."""
    output = tmp_path / "out"
    argv = ["iterate", "--config", "recipes/tiny/iterate.yaml", "--output_dir", str(output)]
    argv += ["--reference", "previous", "--max_steps", "2", "--model_name_or_path", tiny_path]
    assert cli.main(argv) == 0
    summary = json.loads((output / "rankalign_stage.json").read_text())
    assert summary["stage"] == "iterate" and len(summary["mean_reward_per_round"]) == 2
    assert all(math.isfinite(x) for x in summary["kl_to_sft_per_round"])


def test_round_curves_are_plotted(tmp_path):
    from trl_rankalign.evaluation.plots import plot_rounds

    records = [
        {"round": 0, "mean_reward": 0.1, "kl_to_sft": 0.0, "lists": 7},
        {"round": 1, "mean_reward": 0.4, "kl_to_sft": 1.5, "lists": 8, "acceptance_rate": 0.5},
    ]
    (tmp_path / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    written = plot_rounds(tmp_path, tmp_path / "plots")
    assert set(written) == {"mean_reward", "kl_to_sft", "lists", "acceptance_rate"}
    with pytest.raises(FileNotFoundError, match="iterate"):
        plot_rounds(tmp_path / "nowhere", tmp_path / "plots")


def test_configs_with_generation_options_keep_output_dir_first():
    """`IterativeConfig("out")`, as TRL configs are built: the generation mixin's fields must not come first."""
    from trl_rankalign import RAFTConfig, RSOConfig

    for config_class in (IterativeConfig, RAFTConfig, RSOConfig):
        args = config_class("out", bf16=False, use_cpu=True, report_to="none")
        assert args.output_dir == "out" and args.generation_backend == "transformers"


def test_peft_rounds_keep_the_sft_reference(tiny_path, tmp_path):
    """With a LoRA adapter trained through the rounds, every round's reference is the SFT policy: TRL's DPOTrainer
    given a `PeftModel` and no reference copies the round's adapter into a "ref" adapter (the previous round's policy,
    left on the model: the third round then failed with "Adapter with name 'ref' already exists")."""
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = train_iterative(
        tiny_path, PROMPTS, config(tmp_path, num_rounds=3, max_steps=2), reward=reward_fn, peft_config=peft_config
    )
    history = rounds(tmp_path)
    assert [r["round"] for r in history] == [0, 1, 2]
    assert list(model.peft_config) == ["default"]  # no reference adapter left on the policy
    # the KL metric (against the frozen SFT copy) is reported with PEFT too, and moves once the adapter has trained
    assert history[0]["kl_to_sft"] == pytest.approx(0.0, abs=1e-4)
    assert history[2]["kl_to_sft"] != pytest.approx(0.0, abs=1e-4)
