"""The pure helpers of `benchmarks/real.py` (fast): the task's parsing and reward, the bootstrap against a naive loop."""

import dataclasses
import math
import random

import numpy as np
import pytest
from conftest import load_benchmark


_load = load_benchmark


real = _load("real")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("122", 122),
        ("122.", 122),
        (" The answer is 122", 122),
        ("59+63 = 122", 122),  # the last integer: SmolLM2 answers "a + b = c"
        ("59 + 63 = 12", 12),  # cut off mid-number: wrong for 59+63
        ("-5 apples", -5),
        ("twelve", None),
        ("", None),
        ("1,234", 234),
        ("3 apples and 4 pears", 4),
    ],
)
def test_last_integer(text, expected):
    assert real.last_integer(text) == expected


def test_target_reads_string_and_chat_prompts():
    assert real.target(real.PROMPT.format(a=23, b=58)) == 81
    assert real.target(real.chat_prompt(23, 58)) == 81
    with pytest.raises(ValueError, match="not an arithmetic prompt"):
        real.target("Write a poem.")


def test_is_correct_takes_strings_and_assistant_messages():
    prompt = real.chat_prompt(23, 58)
    assert real.is_correct(prompt, "81")
    assert real.is_correct(prompt, [{"role": "assistant", "content": "81, of course"}])
    assert real.is_correct(prompt, "23 + 58 = 81")
    assert not real.is_correct(prompt, "81 is not 23+58")  # the last integer is 58
    assert not real.is_correct(prompt, "")


def test_reward_partial_credit_orders_by_closeness_and_never_beats_exact():
    prompt = real.chat_prompt(23, 58)  # 81
    completions = ["81", "80", "91", "23 + 58 = 58", "no idea", ""]
    scores = real.reward([prompt] * len(completions), completions)
    assert scores[0] == 1.0
    assert scores[1] == pytest.approx(0.5 * math.exp(-0.1))
    assert scores[2] == pytest.approx(0.5 * math.exp(-1.0))
    assert scores[3] == pytest.approx(0.5 * math.exp(-2.3))  # last integer 58
    assert scores[4] == scores[5] == 0.0  # a tie: no integer
    assert scores[0] > scores[1] > scores[2] > scores[3] > scores[4]
    assert all(0.0 <= s <= 0.5 for s in scores[1:])  # a wrong answer gets at most half an exact one


def test_problem_split_is_disjoint_and_stable():
    heldout, train = real.problem_split(100, 128)
    assert len(heldout) == 100 and len(train) == 128
    assert not set(heldout) & set(train)
    small_heldout, small_train = real.problem_split(24, 24)
    assert small_heldout == heldout[:24] and small_train == train[:24]  # quick mode: prefixes of the full split
    assert all(10 <= a <= 99 and 10 <= b <= 99 for a, b in heldout + train)


def test_lists_cache_name_changes_with_every_sampling_or_scoring_setting(monkeypatch):
    base = real.Settings()
    name = real.lists_cache_name("/m/smollm2", base)
    assert real.lists_cache_name("/other/smollm2", base) == name  # the folder's name, not where it lies
    assert real.lists_cache_name("/m/smollm2", dataclasses.replace(base, **real.QUICK)) == name  # quick reuses them
    for field, value in [("k", 3), ("train_prompts", 64), ("max_new_tokens", 10),
                         ("temperature", 0.7), ("top_k", 20), ("sampling_seed", 7)]:  # fmt: skip
        changed = real.lists_cache_name("/m/smollm2", dataclasses.replace(base, **{field: value}))
        assert changed != name, field
    assert real.lists_cache_name("/m/other-model", base) != name
    monkeypatch.setattr(real, "SCORING", "first-integer")  # scores cached under another rule are never reused
    assert real.lists_cache_name("/m/smollm2", base) != name


def test_best_worst_pairs():
    lists = [
        {"prompt": "p", "completions": ["a", "b", "c", "d"], "scores": [0.2, 1.0, 0.0, 0.0]},
        {"prompt": "q", "completions": ["a", "b"], "scores": [0.5, 0.5]},  # fully tied: no pair
    ]
    assert real.best_worst_pairs(lists) == [{"prompt": "p", "chosen": "b", "rejected": "c"}]


def _naive_bootstrap(correct, resamples, seed, level=0.95):
    """The same draws as `bootstrap_ci`, then plain Python: seed means per problem, resampled means, and the
    percentiles by linear interpolation between the order statistics (numpy's default)."""
    rows = [list(map(float, r)) for r in np.atleast_2d(correct)]
    n = len(rows[0])
    per_problem = [sum(r[j] for r in rows) / len(rows) for j in range(n)]
    index = np.random.default_rng(seed).integers(0, n, size=(resamples, n)).tolist()
    means = sorted(sum(per_problem[i] for i in draw) / n for draw in index)

    def percentile(q):
        position = q / 100 * (len(means) - 1)
        low = math.floor(position)
        high = min(low + 1, len(means) - 1)
        return means[low] + (means[high] - means[low]) * (position - low)

    alpha = (1 - level) / 2
    return sum(per_problem) / n, percentile(100 * alpha), percentile(100 * (1 - alpha))


@pytest.mark.parametrize("seeds", [1, 3])
def test_bootstrap_ci_matches_naive_loop(seeds):
    rng = random.Random(seeds)
    correct = np.array([[rng.random() < 0.4 for _ in range(37)] for _ in range(seeds)], dtype=float)
    got = real.bootstrap_ci(correct, resamples=300, seed=5)
    want = _naive_bootstrap(correct, 300, 5)
    assert got == pytest.approx(want, abs=1e-12)
    mean, low, high = got
    assert low <= mean <= high


def test_bootstrap_ci_degenerate_and_shrinking():
    assert real.bootstrap_ci(np.ones(20), resamples=100) == (1.0, 1.0, 1.0)
    rng = np.random.default_rng(0)
    small = real.bootstrap_ci(rng.random(20) < 0.5, resamples=1000)
    large = real.bootstrap_ci(rng.random(2000) < 0.5, resamples=1000)
    assert large[2] - large[1] < small[2] - small[1]


def test_paired_difference_uses_the_same_problems():
    a = np.array([[1, 0, 1, 1, 0, 1]] * 2, dtype=float)
    # Identical arrays: every resampled difference is exactly 0
    assert real.paired_difference_ci(a, a, resamples=200) == (0.0, 0.0, 0.0)
    b = np.zeros_like(a)
    diff, low, high = real.paired_difference_ci(a, b, resamples=200, seed=3)
    assert diff == pytest.approx(4 / 6)
    assert (diff, low, high) == pytest.approx(_naive_bootstrap(a.mean(0) - b.mean(0), 200, 3))


def test_seed_stats():
    assert real.seed_stats([0.5]) == (0.5, 0.0)
    mean, std = real.seed_stats([0.2, 0.4, 0.6])
    assert mean == pytest.approx(0.4) and std == pytest.approx(0.2)


def test_budget_counts_equal_sequences():
    s = real.Settings()
    listwise = real.budget("rankdpo_pl", s)
    assert listwise["trained_sequences"] == s.steps * s.lists_per_step * s.k
    assert real.budget("dpo_best_worst", s)["trained_sequences"] == listwise["trained_sequences"] // 2
    assert real.budget("dpo_best_worst_2b", s)["trained_sequences"] == listwise["trained_sequences"]
    for method in ("iterate_rankdpo", "rloo"):
        assert real.budget(method, s)["trained_sequences"] == listwise["trained_sequences"]
