"""The benchmark helpers (fast) and the quality benchmark's quick mode (slow)."""

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = _load("common")


class UnigramLM(torch.nn.Module):
    """A 'language model' whose next-token distribution is a fixed `probs`, whatever the context."""

    def __init__(self, probs):
        super().__init__()
        self.logits = torch.log(torch.tensor(probs, dtype=torch.float64))

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1))


def test_completion_logprobs_sums_completion_tokens_only():
    # p = [1/2, 1/4, 1/4]; sequence [prompt 0 | completion 1, 2, 0 | pad]: log(1/4) + log(1/4) + log(1/2)
    model = UnigramLM([0.5, 0.25, 0.25])
    input_ids = torch.tensor([[0, 1, 2, 0, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 0]])
    completion_mask = torch.tensor([[0, 1, 1, 1, 0]])
    logps = common.completion_logprobs(model, input_ids, attention_mask, completion_mask)
    assert logps.item() == pytest.approx(2 * math.log(0.25) + math.log(0.5))


def test_kl_estimate_matches_closed_form_on_unigram_sequences():
    # T i.i.d. tokens from p: KL(p^T || q^T) = T * KL(p || q) = 4 * (0.5 log 2.5 + 0.3 log 1.5 + 0.2 log(1/3))
    p, q, length, num = [0.5, 0.3, 0.2], [0.2, 0.2, 0.6], 4, 20000
    exact = length * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    generator = torch.Generator().manual_seed(0)
    completion = torch.multinomial(torch.tensor(p), num * length, replacement=True, generator=generator).view(num, -1)
    input_ids = torch.cat([torch.zeros(num, 1, dtype=torch.long), completion], dim=1)  # one prompt token
    attention_mask = torch.ones_like(input_ids)
    completion_mask = torch.cat([torch.zeros(num, 1, dtype=torch.long), torch.ones_like(completion)], dim=1)
    policy = common.completion_logprobs(UnigramLM(p), input_ids, attention_mask, completion_mask)
    reference = common.completion_logprobs(UnigramLM(q), input_ids, attention_mask, completion_mask)
    kl, stderr = common.kl_estimate(policy, reference)
    assert abs(kl - exact) < 4 * stderr
    assert common.kl_estimate(policy, policy) == (0.0, 0.0)


def test_completion_mask_after_stops_at_the_first_stop_token():
    new_tokens = torch.tensor([[5, 6, 1, 0, 0], [5, 1, 7, 1, 0], [5, 6, 7, 8, 9]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    assert torch.equal(common.completion_mask_after(new_tokens, [1]), expected)


def test_seed_means_and_best_within_budget():
    rows = [
        {"method": "a", "K": 4, "beta": 0.1, "seed": 0, "reward": 1.0, "kl": 3.0},
        {"method": "a", "K": 4, "beta": 0.1, "seed": 1, "reward": 2.0, "kl": 5.0},
        {"method": "a", "K": 4, "beta": 1.0, "seed": 0, "reward": 0.5, "kl": 1.0},
    ]
    points = {p["beta"]: p for p in common.seed_means(rows)}
    assert points[0.1]["reward"] == 1.5 and points[0.1]["kl"] == 4.0 and points[0.1]["seeds"] == 2
    assert common.best_within_budget(list(points.values()), 2.0)["beta"] == 1.0
    assert common.best_within_budget(list(points.values()), 4.0)["beta"] == 0.1
    assert common.best_within_budget(list(points.values()), 0.5) is None


def test_speed_pairs_hold_every_completion_once():
    speed = _load("speed")
    rows = speed.make_rows(2, 4, prompt_len=3, completion_len=2)
    pairs = speed.to_pairs(rows)
    assert len(pairs) == 4
    completions = sorted(c for p in pairs for c in (p["chosen"], p["rejected"]))
    assert completions == sorted(c for r in rows for c in r["completions"])
    tokenizer = speed.build_tokenizer()
    ids = tokenizer(rows[0]["prompt"] + rows[0]["completions"][0] + tokenizer.eos_token)["input_ids"]
    assert len(ids) == 3 + 2 + 1


ISSUE_METHODS = {
    "dpo_best_worst",
    "dpo_all_pairs",
    "rankdpo_pl",
    "rankdpo_lipo",
    "pro",
    "rso",
    "rrhf",
    "slic",
    "preferred_ft",
    "raft",
    "rloo",
}


def test_quality_registry_has_the_issue_methods():
    quality = _load("quality")
    assert ISSUE_METHODS <= set(quality.METHODS)
    assert set(quality.Settings().methods) == set(quality.METHODS)  # a full run runs every registered method
    train, held_out = quality.prompt_split()
    assert len(train) == 90 and len(held_out) == 30 and not set(train) & set(held_out)


def test_quality_knobs_have_sweep_values_in_full_and_quick_mode():
    quality = _load("quality")
    for settings in (quality.Settings(), quality.Settings(**quality.QUICK)):
        for name, (_build, knob) in quality.METHODS.items():
            values = quality.knob_values(settings, knob)
            assert len(values) >= 1, name
            assert (values == (None,)) == (knob is None), name
    assert quality.METHODS["preferred_ft"][1] is None and quality.METHODS["raft"][1] is None
    assert quality.METHODS["rloo"][1] == "beta"  # RLOO's KL coefficient means what DPO's beta means


def test_quality_merge_replaces_same_runs_and_keeps_the_rest():
    quality = _load("quality")
    old = [
        {"method": "sft", "K": 4, "beta": None, "seed": 0, "reward": 0.0, "kl": 0.0},
        {"method": "rankdpo_pl", "K": 4, "beta": 0.1, "seed": 0, "reward": 1.0, "kl": 2.0},
        {"method": "pro", "K": 4, "beta": None, "seed": 0, "sft_weight": 0.05, "reward": 0.7, "kl": 0.5},
        {"method": "rrhf", "K": 4, "beta": None, "seed": 0, "rrhf_weight": 10.0, "reward": 0.1, "kl": 0.1},
    ]
    new = [
        {"method": "sft", "K": 4, "beta": None, "seed": 0, "reward": 0.0, "kl": 0.0},
        {"method": "rrhf", "K": 4, "beta": None, "seed": 0, "rrhf_weight": 10.0, "reward": 0.9, "kl": 1.0},
        {"method": "rrhf", "K": 4, "beta": None, "seed": 0, "rrhf_weight": 1.0, "reward": 0.5, "kl": 0.4},
        {"method": "raft", "K": 4, "beta": None, "seed": 0, "reward": 0.8, "kl": 0.3},
    ]
    merged = quality.merge_rows(old, new)
    assert len(merged) == 6
    assert [r for r in merged if r["method"] in ("rankdpo_pl", "pro")] == old[1:3]
    assert {r["reward"] for r in merged if r["method"] == "rrhf"} == {0.9, 0.5}
    table = quality.summary_table(merged)
    for method in ("sft", "rankdpo_pl", "pro", "rrhf", "raft"):
        assert f"| 4 | {method} |" in table
    assert "λ=10" in table and "w=0.05" in table
    # A stored SFT evaluation that differs means other settings: refuse to merge
    quality.check_sft_rows(old, new[:1])  # the same SFT evaluation: fine
    with pytest.raises(SystemExit):
        quality.check_sft_rows(old, [dict(new[0], reward=0.5)])


@pytest.mark.slow
def test_quality_quick_mode_rankdpo_beats_sft(tmp_path):
    quality = _load("quality")
    quality.main(["--quick", "--output-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache")])
    rows = json.loads((tmp_path / "quality.json").read_text())
    assert {r["method"] for r in rows} == {"sft", *quality.METHODS}
    sft = next(r["reward"] for r in rows if r["method"] == "sft")
    rankdpo = next(r for r in rows if r["method"] == "rankdpo_pl")
    assert rankdpo["reward"] > sft + 0.3, (rankdpo, sft)
    assert rankdpo["kl"] > 0
    assert (tmp_path / "quality.png").stat().st_size > 0
