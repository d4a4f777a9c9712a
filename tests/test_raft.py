import json

import pytest
import torch
from conftest import cpu_config

from trl_rankalign.raft import RAFTConfig, load_raft_round, select_best, train_raft
from trl_rankalign.sampling import generation
from trl_rankalign.tiny.language import reward_fn


PROMPTS = ["Review of the pasta:", "Review of the hotel room:", "Your thoughts on the salad:", "Review of the camera:"]


def test_select_best_keeps_the_argmax_first_on_ties():
    rows = [
        {"prompt": "p", "completions": [" a", " b", " c"], "scores": [0.0, 2.0, 2.0]},
        {"prompt": "q", "completions": [" d", " e"], "scores": [-1.0, -3.0]},
    ]
    best = select_best(rows)
    assert best["completion"] == [" b", " d"] and best["score"] == [2.0, -1.0]


def test_round_trip_and_resume(tiny_path, tmp_path, monkeypatch):
    args = cpu_config(
        RAFTConfig, tmp_path, num_rounds=2, num_samples=4, max_new_tokens=8, max_steps=3, sampling_batch_size=2
    )
    model = train_raft(tiny_path, PROMPTS, args, reward=reward_fn)
    # The returned policy is the last round's trained model: its weights are the saved ones and moved from the start
    from transformers import AutoModelForCausalLM

    start = dict(AutoModelForCausalLM.from_pretrained(tiny_path).named_parameters())
    saved = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "round_1" / "model").named_parameters())
    returned = dict(model.named_parameters())
    assert returned.keys() == saved.keys()
    assert all(torch.equal(returned[name].detach().cpu(), saved[name].detach()) for name in saved)
    assert any(not torch.equal(saved[name], start[name]) for name in start)
    for r in range(2):
        rows = [json.loads(line) for line in (tmp_path / f"round_{r}" / "samples.jsonl").read_text().splitlines()]
        assert sorted(row["index"] for row in rows) == [0, 1, 2, 3]
        assert all(row["scores"] == reward_fn(PROMPTS, row["completions"]) for row in rows)
        best = load_raft_round(str(tmp_path), r)
        by_prompt = {row["prompt"]: max(row["scores"]) for row in rows}
        assert [by_prompt[p] for p in best["prompt"]] == best["score"]  # the best of each prompt was kept
        assert (tmp_path / f"round_{r}" / "model" / ".done").exists()
    assert (tmp_path / "config.json").exists()

    # A rerun loads the finished rounds instead of sampling or training again
    def no_generation(*args, **kwargs):
        raise AssertionError("finished rounds must not be sampled again")

    monkeypatch.setattr(generation, "generate_completions", no_generation)
    train_raft(tiny_path, PROMPTS, args, reward=reward_fn)


def test_interrupted_sampling_is_kept_and_resumed(tiny_path, tmp_path, monkeypatch):
    args = cpu_config(RAFTConfig, tmp_path, num_samples=3, max_new_tokens=6, max_steps=1, sampling_batch_size=2)
    calls = []

    def flaky_reward(prompts, completions):
        calls.append(len(completions))
        if len(calls) == 2:
            raise RuntimeError("reward server down")
        return reward_fn(prompts, completions)

    with pytest.raises(RuntimeError, match="reward server down"):
        train_raft(tiny_path, PROMPTS, args, reward=flaky_reward)
    cached = (tmp_path / "round_0" / "samples.jsonl").read_text().splitlines()
    assert len(cached) == 2  # the first batch (2 prompts) survived
    train_raft(tiny_path, PROMPTS, args, reward=flaky_reward)
    assert calls == [6, 6, 6]  # only the unfinished batch was sampled and scored again
    assert len(load_raft_round(str(tmp_path), 0)) == 4


def test_bad_input(tiny_path, tmp_path):
    args = cpu_config(RAFTConfig, tmp_path)
    with pytest.raises(ValueError, match="needs a reward"):
        train_raft(tiny_path, PROMPTS, args)
    with pytest.raises(ValueError, match="prompt set is empty"):
        train_raft(tiny_path, [], args, reward=reward_fn)
    with pytest.raises(ValueError, match="num_rounds"):
        cpu_config(RAFTConfig, tmp_path, num_rounds=0)

    def nan_reward(prompts, completions):
        return [float("nan")] * len(completions)

    with pytest.raises(ValueError, match="non-finite reward at index 0"):
        train_raft(tiny_path, PROMPTS, cpu_config(RAFTConfig, tmp_path / "nan", max_new_tokens=4), reward=nan_reward)


def test_generation_pads_with_eos_when_the_tokenizer_has_no_pad_token(tiny_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    tokenizer.pad_token = None
    out = generation.generate_completions(model, tokenizer, PROMPTS[:2], num_return_sequences=2, batch_size=2, seed=0)
    assert [len(c) for c in out] == [2, 2] and tokenizer.pad_token is None
