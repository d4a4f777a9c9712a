"""The benchmark helpers (fast) and the quality benchmark's quick mode (slow)."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import load_benchmark


_load = load_benchmark


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


def test_speed_summary_pairs_runs_made_back_to_back():
    """Ratios are DPO's step time over the trainer's: of the medians, and per run index (median and range)."""
    speed = _load("speed")
    steps = {"dpo": [1.0, 2.0, 1.2], "rankdpo": [1.0, 1.0, 1.0], "rankdpo_shared": [0.5, 0.4, 0.6]}
    runs = [
        {
            "trainer": trainer,
            "shape": "tldr",
            "k": 4,
            "run": run,
            "step_time_s": step,
            "completions_per_s": 4 / step,
            "tokens_per_s": 100 / step,
            "peak_rss_mib": 10.0,
            "peak_rss_per_completion_mib": 2.0,
        }
        for trainer, times in steps.items()
        for run, step in enumerate(times)
    ]
    (entry,) = speed.summarize(runs)
    shared = entry["ratio"]["rankdpo_shared"]
    assert shared["completions_per_s"] == pytest.approx(1.2 / 0.5)  # medians: DPO 1.2 s, shared 0.5 s
    paired = [d / r for d, r in zip(steps["dpo"], steps["rankdpo_shared"])]  # 2.0, 5.0, 2.0
    assert shared["paired_speed_median"] == pytest.approx(sorted(paired)[1])
    assert shared["paired_speed_range"] == pytest.approx([min(paired), max(paired)])
    assert "2.40× (2.00×, 2.00–5.00)" in speed.table([entry], lists_per_step=1)


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
    "iterate_rankdpo",
    "iterate_lipo",
    "iterate_pro",
    "iterate_dpo",
    "iterate_rankdpo_rso",
}


def test_quality_registry_has_the_issue_methods():
    quality = _load("quality")
    assert ISSUE_METHODS <= set(quality.METHODS)
    assert set(quality.Settings().methods) == set(quality.METHODS)  # a full run runs every registered method
    assert set(quality.NOISY_METHODS) <= set(quality.METHODS)
    assert {"dpo_best_worst", "rloo", *quality.LISTWISE} & set(quality.METHODS) == {
        "dpo_best_worst",
        "rloo",
        *quality.LISTWISE,
    }
    assert quality.ONLINE <= set(quality.METHODS)
    train, held_out = quality.prompt_split()
    assert len(train) == 90 and len(held_out) == 30 and not set(train) & set(held_out)


def test_quality_knobs_have_sweep_values_in_full_and_quick_mode():
    quality = _load("quality")
    for settings, least in ((quality.Settings(), 5), (quality.Settings(**quality.QUICK), 1)):
        for name, (_build, knob) in quality.METHODS.items():
            values = quality.knob_values(settings, knob)
            assert len(values) >= (1 if knob is None else least), name
            assert (values == (None,)) == (knob is None), name
    assert quality.METHODS["preferred_ft"][1] is None and quality.METHODS["raft"][1] is None
    assert quality.METHODS["rloo"][1] == "beta"  # RLOO's KL coefficient means what DPO's beta means
    assert quality.METHODS["iterate_pro"][1] == "sft_weight"
    with pytest.raises(ValueError):
        quality.Settings(steps=10, iterate_rounds=4)  # the steps must split evenly into rounds
    with pytest.raises(ValueError):
        quality.Settings(labels="people")


def test_quality_budget_trains_every_method_on_the_same_sequences():
    # K=4, 40 steps of 4 lists: 640 sequences trained on by every method; online methods generate as many, the offline
    # ones the 180 x 4 completions of the lists (or of their own candidates)
    quality = _load("quality")
    settings = quality.Settings()
    for name in quality.METHODS:
        counts = quality.budget(name, settings, 4)
        assert counts["trained"] == 640, name
        assert counts["generated"] == (640 if name in quality.ONLINE else 720), name
    assert quality.budget("sft", settings, 8) == {"trained": 0, "generated": 0}


def test_plackett_luce_ranks_are_rank_scores_with_bradley_terry_pairwise_marginals():
    quality = _load("quality")
    rewards, tau = [0.0, 1.0, 3.0, 1.0], 1.5
    draws = [quality.plackett_luce_ranks(rewards, tau, seed) for seed in range(4000)]
    assert all(sorted(d) == [0.0, 1.0, 2.0, 3.0] for d in draws)
    assert quality.plackett_luce_ranks(rewards, tau, 3) == draws[3]  # a seed gives one ranking
    # P(completion 1 above completion 0) = sigmoid(1 / tau) = 0.661; P(2 above 1) = sigmoid(2 / tau) = 0.791; tied
    # rewards (1 and 3) are ordered at random (1/2). Standard error of a share of 4000 draws: <= 0.008.
    for (i, j), expected in (
        ((1, 0), 1 / (1 + math.exp(-1 / tau))),
        ((2, 1), 1 / (1 + math.exp(-2 / tau))),
        ((1, 3), 0.5),
    ):
        share = sum(d[i] > d[j] for d in draws) / len(draws)
        assert abs(share - expected) < 0.03, (i, j, share, expected)
    # A vanishing temperature ranks by the reward
    assert quality.plackett_luce_ranks([2.0, -1.0, 5.0], 1e-3, 0) == [1.0, 0.0, 2.0]


def test_pairwise_agreement_counts_pairs_with_distinct_true_scores():
    quality = _load("quality")
    # List 1: pairs (0,1) agree, (0,2) agree, (1,2) disagree; list 2: the tied pair is not counted, (0,1) agrees
    truth = [[3.0, 2.0, 1.0], [1.0, 1.0]]
    labels = [[2.0, 0.0, 1.0], [0.0, 1.0]]
    assert quality.pairwise_agreement(truth, labels) == pytest.approx(2 / 3)
    assert quality.pairwise_agreement([[2.0, 1.0, 0.0]], [[2.0, 1.0, 0.0]]) == 1.0


def test_noisy_reward_ranks_each_group_of_one_prompt_and_is_a_function_of_the_list():
    quality = _load("quality")
    prompts = ["Review of the soup:"] * 3 + ["Review of the pool:"] * 3
    completions = [" great great", " bad", " fine", " awful", " great", " nice nice nice"]
    scores = quality.noisy_reward(prompts, completions, tau=1.8, label_seed=7, group=3)
    assert sorted(scores[:3]) == [0.0, 1.0, 2.0] and sorted(scores[3:]) == [0.0, 1.0, 2.0]
    # The same list gets the same labels wherever it is labelled (alone, in another batch, as an offline list)
    assert quality.noisy_reward(prompts[3:], completions[3:], tau=1.8, label_seed=7, group=3) == scores[3:]
    settings = quality.Settings(labels="noisy")
    row = {"prompt": prompts[0], "completions": completions[:3], "scores": [2.0, -1.0, 0.0]}
    (relabelled,), _ = quality.relabel([row], settings)
    assert relabelled["scores"] == quality.reward_for(settings, 3)(prompts[:3], completions[:3]) == scores[:3]
    with pytest.raises(ValueError, match="mixes prompts"):
        quality.noisy_reward(prompts[1:4], completions[1:4], tau=1.8, label_seed=7, group=3)
    with pytest.raises(ValueError, match="groups of 3"):
        quality.noisy_reward(prompts[:2], completions[:2], tau=1.8, label_seed=7, group=3)
    assert quality.relabel([row], quality.Settings()) == ([row], 1.0)  # exact labels: untouched


def test_quality_frontier_envelope_and_dominance():
    quality = _load("quality")
    a = [
        {"kl": 0.5, "reward": 0.6},
        {"kl": 2.0, "reward": 1.0},
        {"kl": 3.0, "reward": 0.9},
        {"kl": 12.0, "reward": 2.0},
    ]
    b = [{"kl": 1.0, "reward": 0.5}, {"kl": 4.0, "reward": 1.2}]
    assert [p["kl"] for p in quality.envelope(a)] == [0.5, 2.0, 12.0]  # (3.0, 0.9) lies under (2.0, 1.0)
    # Budgets 1..4: a has 0.6 / 1.0 against b's 0.5; from 4 on b has 1.2 > 1.0 (a's 2.0 is at KL 12 > 10)
    margin, where = quality.dominance(a, b, max_kl=10.0)
    assert margin == pytest.approx(-0.2) and where == 4.0
    margin, where = quality.dominance(a, b, max_kl=3.5)
    assert margin == pytest.approx(0.1) and where == 1.0
    # No point of `a` within a budget where `b` has one: -inf
    assert quality.dominance([{"kl": 5.0, "reward": 9.0}], b, max_kl=10.0) == (-math.inf, 1.0)


def test_quality_trace_points_average_seeds_per_knob_and_step_and_report_them():
    quality = _load("quality")

    def run(method, seed, reward, kl, trace, **knob):
        row = {"method": method, "K": 4, "seed": seed, "steps": 40, "reward": reward, "kl": kl, "trace": trace}
        return row | {"beta": None, "trained": 640, "generated": 720} | knob

    rows = [
        {"method": "sft", "K": 4, "beta": None, "seed": 0, "reward": 0.0, "kl": 0.0, "trained": 0, "generated": 0},
        run("rankdpo_pl", 0, 2.0, 9.0, [{"step": 20, "reward": 1.0, "kl": 1.0}], beta=0.1),
        run("rankdpo_pl", 1, 1.0, 7.0, [{"step": 20, "reward": 2.0, "kl": 3.0}], beta=0.1),
        run("dpo_best_worst", 0, 1.2, 4.0, [{"step": 20, "reward": 0.4, "kl": 0.5}], beta=0.1),
        run("rloo", 0, 0.9, 3.0, [{"step": 20, "reward": 0.2, "kl": 0.2}], beta=0.1),
        run("pro", 0, 1.3, 0.1, [], sft_weight=0.05),
    ]
    points = {(p["method"], p["step"]): p for p in quality.trace_points(rows)}
    assert points[("rankdpo_pl", 20)]["reward"] == 1.5 and points[("rankdpo_pl", 20)]["kl"] == 2.0
    assert points[("rankdpo_pl", 40)]["reward"] == 1.5 and points[("rankdpo_pl", 40)]["kl"] == 8.0
    assert points[("sft", 0)]["kl"] == 0.0 and points[("pro", 40)]["beta"] == 0.05
    table = quality.summary_table(rows)
    # Frontier of rankdpo_pl at KL <= 2: the step-20 point (1.5); its end points start at KL 8
    assert "| 4 | rankdpo_pl | 720 / 640 | – | 1.50 | 1.50 | 1.50 | 1.50 ± 0.71 (KL 2.00, β=0.1, step 20) |" in table
    assert "| 4 | rankdpo_pl | – | – | – | 1.50 | 1.50 ± 0.71 (KL 8.00, β=0.1) |" in table
    assert "| 4 | pro | 720 / 640 | 1.30 |" in table and "w=0.05" in table
    assert "| 4 | rankdpo_pl | -0.40 (KL ≤ 0.50) | -0.20 (KL ≤ 0.20) | no |" in table
    # rankdpo_pl has only the SFT policy (reward 0) within KL 0.5, where DPO reaches 0.4; PRO's single point (KL 0.1,
    # reward 1.3) stays above DPO's 1.2 at KL 4 and RLOO's 0.9 at KL 3
    assert "| 4 | pro | +0.10 (KL ≤ 4.00) | +0.40 (KL ≤ 3.00) | yes |" in table


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


@pytest.fixture(scope="module")
def smoke_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("quality-cache")  # the smoke runs share one tiny SFT policy and its lists


def _smoke_settings(quality, labels, methods):
    """A tiny configuration of the whole pipeline: 40 pre-training steps, K=4, 4 optimizer steps of 2 lists, traced
    every 2 steps, 2 iterate rounds, one evaluation sample per held-out prompt."""
    return quality.Settings(
        ks=(4,),
        betas=(0.1,),
        pro_sft_weights=(0.05,),
        seeds=(0,),
        methods=methods,
        labels=labels,
        pretrain_lines=500,
        pretrain_steps=40,
        list_repeats=1,
        max_new_tokens=12,
        steps=4,
        lists_per_step=2,
        iterate_rounds=2,
        eval_samples=1,
        eval_every=2,
        eval_trace_samples=1,
    )


@pytest.mark.parametrize(
    ("labels", "methods"),
    [("exact", ("dpo_best_worst", "rankdpo_pl", "iterate_dpo")), ("noisy", ("rloo", "iterate_rankdpo_rso"))],
)
def test_quality_smoke_traces_every_run(tmp_path, smoke_cache, labels, methods):
    quality = _load("quality")
    settings = _smoke_settings(quality, labels, methods)
    quality.run(settings, tmp_path, smoke_cache)
    stem = quality.result_stem(settings)
    rows = json.loads((tmp_path / f"{stem}.json").read_text())
    assert {r["method"] for r in rows} == {"sft", *methods}
    for row in rows:
        if row["method"] == "sft":
            continue
        # One traced point at step 2 (a trainer's callback, or iterate's first round policy), the end point at 4
        assert [p["step"] for p in row["trace"]] == [2], row["method"]
        assert math.isfinite(row["trace"][0]["kl"]) and math.isfinite(row["kl"])
        assert row["trained"] == 4 * 2 * 4 and row["labels"] == labels
        assert row["generated"] == (32 if row["method"] in quality.ONLINE else 90 * 4)
        if labels == "noisy":
            assert 0.5 < row["label_agreement"] < 1.0 and row["noise_tau"] == settings.noise_tau
        if row["method"].startswith("iterate"):
            assert [r["round"] for r in row["rounds"]] == [0, 1]
    report = (tmp_path / f"{stem}.md").read_text()
    assert "| 4 | sft | 0 / 0 |" in report and "End points only" in report
    assert (tmp_path / f"{stem}.png").stat().st_size > 0


@pytest.mark.slow
def test_quality_quick_mode_rankdpo_beats_sft(tmp_path):
    quality = _load("quality")
    quality.main(["--quick", "--output-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache")])
    rows = json.loads((tmp_path / "quality.json").read_text())
    assert {r["method"] for r in rows} == {"sft", *quality.METHODS}
    sft = next(r["reward"] for r in rows if r["method"] == "sft")
    rankdpo = next(r for r in rows if r["method"] == "rankdpo_pl")
    assert rankdpo["reward"] > sft + 0.3, (rankdpo, sft)
    assert rankdpo["kl"] > 0 and [p["step"] for p in rankdpo["trace"]] == [20]
    assert (tmp_path / "quality.png").stat().st_size > 0
