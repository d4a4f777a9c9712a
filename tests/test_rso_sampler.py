"""Tests for `RSOSampler` / `RSOConfig` (RSO, Liu et al. 2023, arXiv:2309.06657) on the tiny default."""

import functools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import cpu_config
from datasets import Dataset, load_from_disk
from trl import DPOConfig

from trl_rankalign import rso_sampler
from trl_rankalign.rso_config import RSOConfig
from trl_rankalign.rso_sampler import RSOSampler, sample_rso_dataset
from trl_rankalign.sampling import generation
from trl_rankalign.sampling.generation import read_jsonl
from trl_rankalign.sampling.scorers import RewardModelScorer
from trl_rankalign.tiny import tiny_prompt_dataset, train_tiny_reward_model
from trl_rankalign.tiny.language import reward_fn


NUM_PROMPTS, NUM_CANDIDATES, NUM_ACCEPTED, BATCH = 6, 8, 4, 2  # 3 sampling batches of 2 prompts
RSO_KEYS = [
    "rso/acceptance_rate",
    "rso/accepted_fraction",
    "rso/reward_all",
    "rso/reward_accepted",
    "rso/reward_best",
    "rso/pair_reward_gap",
    "rso/num_pairs",
    "rso/tied_pairs_dropped",
]
DPO_KEYS = ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen"]


def prompts(num=NUM_PROMPTS):
    return tiny_prompt_dataset().select(range(num))


def rso_config(output_dir, **overrides):
    kwargs = dict(
        num_candidates=NUM_CANDIDATES,
        num_accepted=NUM_ACCEPTED,
        max_new_tokens=12,
        sampling_batch_size=BATCH,
        max_steps=4,
    )
    kwargs.update(overrides)
    return cpu_config(RSOConfig, output_dir, **kwargs)


@pytest.fixture
def generated(monkeypatch):
    """Counts the prompts that go through `generate` (wraps `generation.generate_completions`)."""
    counter = {"prompts": 0}
    original = generation.generate_completions

    def counting(model, tokenizer, batch_prompts, *args, **kwargs):
        counter["prompts"] += len(batch_prompts)
        return original(model, tokenizer, batch_prompts, *args, **kwargs)

    monkeypatch.setattr(generation, "generate_completions", counting)
    return counter


@pytest.fixture(scope="module")
def saved_set(tiny_path, tmp_path_factory):
    """A set sampled once with `reward_fn` and saved: tests that only train on it reuse it via `samples_dir`."""
    samples_dir = str(tmp_path_factory.mktemp("rso_saved") / "rso_samples")
    sample_rso_dataset(tiny_path, rso_config(samples_dir, samples_dir=samples_dir), prompts(), reward_model=reward_fn)
    return samples_dir


class FlakyReward:
    """`reward_fn` whose second call returns `bad` (the identity, hence the cache, is the same when fixed)."""

    def __init__(self, bad):
        self.bad, self.calls = bad, 0

    def __call__(self, prompts, completions):
        self.calls += 1
        rewards = reward_fn(prompts, completions)
        if self.bad is not None and self.calls == 2:
            return self.bad(rewards)
        return rewards


# ------------------------------------------------------------------------------------------------------ config
def test_config_defaults_are_the_papers(tmp_path):
    args = RSOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False)
    assert (args.num_candidates, args.num_accepted, args.rso_beta, args.beta) == (64, 8, 0.5, 0.05)
    assert (args.sampling_temperature, args.sampling_top_k, args.pairing) == (0.7, 40, "first_round")
    assert args.loss_type == ["sigmoid"] and args.sampling_seed == args.seed
    assert args.samples_dir == str(tmp_path / "rso_samples")
    assert cpu_config(RSOConfig, tmp_path, loss_type="hinge").loss_type == ["hinge"]


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"num_candidates": 4, "num_accepted": 8}, r"num_accepted.*\(8\) cannot exceed `num_candidates` \(4\)"),
        ({"num_accepted": 1}, "num_accepted.*>= 2"),
        ({"loss_type": ["sigmoid_norm"]}, "sigmoid_norm.*length normalisation"),
        ({"loss_type": ["ipo"]}, "hinge"),
        ({"loss_type": ["sigmoid", "hinge"]}, "sigmoid"),
        ({"rso_beta": 0.0}, "rso_beta"),
        ({"rso_beta": float("nan")}, "rso_beta"),
        ({"pairing": "neighbours"}, "pairing"),
        ({"sampling_temperature": 0.0}, "sampling_temperature"),
    ],
)
def test_config_validation(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        cpu_config(RSOConfig, tmp_path, **overrides)


# ------------------------------------------------------------------------------------------------------ loss
@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge"])
def test_per_pair_loss_is_rso_loss_of_gamma_delta(tiny_path, tmp_path, saved_set, generated, loss_type):
    """Per pair: sigmoid-norm −log σ(γΔ), hinge-norm max(0, 1 − γΔ), Δ = DPO's log-ratio difference, γ = `beta`.

    Δ = [log π(y_w) − log π_ref(y_w)] − [log π(y_l) − log π_ref(y_l)], computed here with two plain forwards; the
    policy is perturbed first so Δ ≠ 0. Each pair is its own batch, so the trainer's loss is that pair's loss.
    """
    args = rso_config(tmp_path, loss_type=loss_type, samples_dir=saved_set)
    trainer = RSOSampler(tiny_path, reward_fn, args=args, train_dataset=prompts())
    assert generated["prompts"] == 0  # the saved set is reused
    gamma = trainer.args.beta
    assert gamma == 0.05
    torch.manual_seed(0)
    with torch.no_grad():
        for param in trainer.model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    trainer.model.train()
    deltas = []
    for i in range(len(trainer.train_dataset)):
        batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i]]))
        policy_chosen, policy_rejected = trainer.compute_ref_log_probs(trainer.model, batch)
        ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.ref_model, batch)
        delta = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)  # (1,)
        expected = torch.relu(1 - gamma * delta) if loss_type == "hinge" else -F.logsigmoid(gamma * delta)
        with torch.no_grad():
            loss = trainer.compute_loss(trainer.model, batch)
        torch.testing.assert_close(loss, expected.squeeze(0), atol=1e-5, rtol=1e-5)
        deltas.append(delta.item())
    assert len(deltas) >= 2 and max(abs(d) for d in deltas) * gamma > 1e-3  # a non-trivial check


# ---------------------------------------------------------------------------------------------- end to end
def test_generate_sample_train_then_reuse(tiny_path, tmp_path, generated, monkeypatch):
    args = rso_config(tmp_path)
    trainer = RSOSampler(tiny_path, reward_fn, args=args, train_dataset=prompts())
    assert generated["prompts"] == NUM_PROMPTS

    # The saved set: one row per prompt, indices into its candidates, pairs labelled by reward
    saved = load_from_disk(str(tmp_path / "rso_samples" / "dataset"))
    samples, pairs = saved["samples"], saved["pairs"]
    assert samples["prompt"] == prompts()["prompt"] and samples["index"] == list(range(NUM_PROMPTS))
    for row in samples:
        assert len(row["completions"]) == len(row["scores"]) == NUM_CANDIDATES
        assert row["scores"] == reward_fn(None, row["completions"])
        assert len(set(row["accepted"])) == len(row["accepted"]) == NUM_ACCEPTED
        assert len(row["pairs"]) <= NUM_ACCEPTED // 2  # first round: disjoint pairs, ties dropped
        for chosen, rejected in row["pairs"]:
            assert {chosen, rejected} <= set(row["accepted"]) and row["scores"][chosen] > row["scores"][rejected]
    for pair in pairs:
        row = samples[pair["prompt_index"]]
        assert pair["chosen"] == row["completions"][pair["chosen_index"]]
        assert pair["rejected"] == row["completions"][pair["rejected_index"]]
        assert pair["chosen_score"] > pair["rejected_score"]
    assert len(trainer.train_dataset) == len(pairs) == sum(len(p) for p in samples["pairs"]) > 0
    info = json.loads((tmp_path / "rso_samples" / "rso_info.json").read_text())
    assert info["selection"]["rso_beta"] == 0.5 and info["stats"] == pytest.approx(trainer.rso_stats, nan_ok=True)
    assert len(read_jsonl(tmp_path / "rso_samples" / info["candidates_file"])) == NUM_PROMPTS

    # Training: loss falls, every parameter moves, RSO statistics next to TRL's DPO metrics
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert history[-1]["loss"] < history[0]["loss"], [h["loss"] for h in history]
    for key in RSO_KEYS:
        assert key in history[0] and math.isfinite(history[0][key]), key
    assert history[0]["rso/accepted_fraction"] == NUM_ACCEPTED / NUM_CANDIDATES
    assert history[0]["rso/reward_accepted"] >= history[0]["rso/reward_all"]  # π_r tilts towards high reward
    assert 1 / NUM_CANDIDATES <= history[0]["rso/acceptance_rate"] <= 1
    assert history[0]["rso/pair_reward_gap"] > 0
    for key in DPO_KEYS:
        assert all(key in h and math.isfinite(h[key]) for h in history), key
    for name, param in trainer.model.named_parameters():
        assert not torch.equal(param, before[name]), f"{name} did not move"
    assert "rso" in trainer.model.model_tags
    trainer.create_model_card(model_name="tiny-rso")
    card = (tmp_path / "README.md").read_text()
    assert "RSO" in card and "2309.06657" in card and "Statistical Rejection Sampling" in card

    # A second run finds the saved set: no generation, no scoring, the same pairs
    scored = []

    @functools.wraps(reward_fn)  # same qualified name, so the same identity as `reward_fn`
    def counting_reward(prompts, completions):
        scored.append(len(completions))
        return reward_fn(prompts, completions)

    again = RSOSampler(tiny_path, counting_reward, args=rso_config(tmp_path), train_dataset=prompts())
    assert generated["prompts"] == NUM_PROMPTS and scored == []
    assert again.rso_samples["pairs"].to_list() == pairs.to_list()
    # ... and the sampling stage alone returns it too
    assert RSOSampler.sample(tiny_path, rso_config(tmp_path), prompts(), reward_fn)["samples"].to_list() == (
        samples.to_list()
    )
    assert generated["prompts"] == NUM_PROMPTS

    # Changing only the selection (β, pairing) reuses the candidates, loads no model, reruns Algorithm 1 and pairing
    monkeypatch.setattr(rso_sampler, "_load_policy", lambda *a: pytest.fail("the policy was loaded"))
    with pytest.raises(ValueError, match="reward model"):
        sample_rso_dataset(tiny_path, rso_config(tmp_path / "other"), prompts())  # (no reward model anywhere)
    tournament = sample_rso_dataset(
        tiny_path, rso_config(tmp_path, rso_beta=1e-3, pairing="tournament"), prompts(), reward_model=reward_fn
    )
    assert generated["prompts"] == NUM_PROMPTS
    for old, new in zip(samples, tournament["samples"]):
        assert new["completions"] == old["completions"] and new["scores"] == old["scores"]
        # β → 0 keeps the top-k rewards; a bracket has k − 1 matches (fewer once ties are dropped)
        assert sorted(new["scores"][i] for i in new["accepted"]) == sorted(new["scores"])[-NUM_ACCEPTED:]
        assert len(new["pairs"]) <= NUM_ACCEPTED - 1


def test_conversational_prompts(tiny_path, tmp_path):
    chat = prompts(4).map(lambda r: {"prompt": [{"role": "user", "content": r["prompt"]}]})
    trainer = RSOSampler(tiny_path, reward_fn, args=rso_config(tmp_path, drop_tied_pairs=False), train_dataset=chat)
    row = trainer.rso_samples["samples"][0]
    assert row["completions"][0][0]["role"] == "assistant"
    pair = trainer.rso_samples["pairs"][0]
    assert pair["prompt"] == chat[0]["prompt"] and pair["chosen"][0]["role"] == "assistant"
    assert len(trainer.train_dataset) == 4 * NUM_ACCEPTED // 2  # ties kept: every first-round pair


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda rewards: rewards[:-1], "returned 15 rewards for 16 completions"),
        (lambda rewards: [float("nan")] + rewards[1:], "non-finite reward at index 0"),
        (lambda rewards: torch.tensor(rewards).view(-1, 2), r"shape \(8, 2\)"),
    ],
    ids=["wrong-length", "nan", "wrong-shape"],
)
def test_bad_reward_fails_and_keeps_finished_batches(tiny_path, tmp_path, generated, bad, match):
    reward = FlakyReward(bad)
    with pytest.raises(ValueError, match=match):
        RSOSampler(tiny_path, reward, args=rso_config(tmp_path), train_dataset=prompts())
    assert generated["prompts"] == 2 * BATCH  # batch 0 finished, batch 1 failed at scoring
    cache = list((tmp_path / "rso_samples").glob("candidates-*.jsonl"))
    assert len(cache) == 1 and [row["index"] for row in read_jsonl(cache[0])] == [0, 1]
    assert not (tmp_path / "rso_samples" / "rso_info.json").exists()

    reward.bad = None  # fixed: the rerun generates only the unfinished batches and keeps batch 0 as it was
    first_batch = read_jsonl(cache[0])
    dataset = RSOSampler.sample(tiny_path, rso_config(tmp_path), prompts(), reward)
    assert generated["prompts"] == 2 * BATCH + (NUM_PROMPTS - BATCH)
    assert dataset["samples"].select(range(BATCH))["completions"] == [row["completions"] for row in first_batch]


def test_bad_prompts_fail_clearly(tiny_path, tmp_path, generated):
    args = rso_config(tmp_path)
    with pytest.raises(ValueError, match="prompt dataset is empty"):
        RSOSampler(tiny_path, reward_fn, args=args, train_dataset=Dataset.from_dict({"prompt": []}))
    with pytest.raises(ValueError, match="row 1, field 'prompt'.*empty"):
        RSOSampler(tiny_path, reward_fn, args=args, train_dataset=Dataset.from_dict({"prompt": ["Review:", "  "]}))
    with pytest.raises(ValueError, match="'prompt' column"):
        RSOSampler(tiny_path, reward_fn, args=args, train_dataset=Dataset.from_dict({"text": ["Review:"]}))
    with pytest.raises(ValueError, match="train_dataset"):
        RSOSampler(tiny_path, reward_fn, args=args)
    with pytest.raises(TypeError, match="RSOConfig"):
        RSOSampler(tiny_path, reward_fn, args=cpu_config(DPOConfig, tmp_path), train_dataset=prompts())
    assert generated["prompts"] == 0


def test_all_tied_rewards_give_a_clear_error(tiny_path, tmp_path):
    with pytest.raises(ValueError, match="no preference pairs.*drop_tied_pairs"):
        RSOSampler(tiny_path, lambda p, c: [1.0] * len(c), args=rso_config(tmp_path), train_dataset=prompts(2))


# ----------------------------------------------------------------------------------------- real reward model
def test_reward_model_trained_by_reward_trainer(tiny_path, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    reward_path = train_tiny_reward_model(
        str(tmp_path / "reward"), model=tiny_path, max_steps=3, per_device_train_batch_size=8, logging_steps=1
    )
    args = rso_config(tmp_path / "rso", max_steps=2, reward_model_path=reward_path)
    trainer = RSOSampler(tiny_path, args=args, train_dataset=prompts(4))  # reward model from the config
    samples = trainer.rso_samples["samples"]
    scorer = RewardModelScorer(reward_path)
    row = samples[0]
    torch.testing.assert_close(scorer([row["prompt"]] * NUM_CANDIDATES, row["completions"]), row["scores"])
    trainer.train()
    assert "rso/reward_all" in trainer.state.log_history[0]

    # A loaded reward model with its tokenizer scores the same candidates the same way
    loaded = AutoModelForSequenceClassification.from_pretrained(reward_path)
    same = sample_rso_dataset(
        tiny_path,
        rso_config(tmp_path / "loaded"),
        prompts(4),
        reward_model=loaded,
        reward_processing_class=AutoTokenizer.from_pretrained(reward_path),
    )
    for a, b in zip(same["samples"]["scores"], samples["scores"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
