"""The `rank` stage: a callable reward on the tiny default, an LLM judge on a stub endpoint (rating and pairwise),
resuming after an interruption, the Bradley-Terry fit, and generation -> rank -> a dataset RankDPOTrainer accepts."""

import argparse
import json
import math

import numpy as np
import pytest
from conftest import cpu_config
from datasets import load_from_disk

from trl_rankalign.cli.rank import add_rank_parser, run_rank
from trl_rankalign.data.schema import rank_order, validate_ranked_dataset
from trl_rankalign.evaluation import JudgeClient
from trl_rankalign.sampling.rank import DEFAULT_ASPECTS, bradley_terry, rank_candidates, split_num_samples
from trl_rankalign.tiny import tiny_ranked_dataset
from trl_rankalign.tiny.language import reward_fn, true_reward


# Candidates with known true rewards (positive minus negative words).
PROMPTS = ["Review of the pasta:", "Review of the hotel:", "Review of the museum:"]
CANDIDATES = [
    [" The pasta was okay.", " The pasta was great, fresh and tasty.", " The pasta was awful.", " It was lovely."],
    [" The hotel was dirty and noisy.", " The hotel was clean.", " The mystery hotel was fine."],
    [" The museum was dull.", " The mystery museum was great."],
]
REWARDS = [[0.0, 3.0, -1.0, 1.0], [-2.0, 1.0, 0.0], [-1.0, 1.0]]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def cli(*argv):
    parser = argparse.ArgumentParser(prog="trl-rankalign")
    add_rank_parser(parser.add_subparsers(dest="command", required=True))
    return run_rank(parser.parse_args(["rank", *map(str, argv)]))


def test_constructed_rewards_are_what_reward_fn_says():
    assert [[true_reward(c) for c in cands] for cands in CANDIDATES] == REWARDS


# ----------------------------------------------------------------------------------------------------- reward


def test_rank_with_a_callable_gives_the_exact_order(tmp_path):
    data = rank_candidates(PROMPTS, CANDIDATES, reward=reward_fn, output_dir=tmp_path, batch_size=2)
    assert data.to_list() == [
        {"prompt": p, "completions": c, "scores": r} for p, c, r in zip(PROMPTS, CANDIDATES, REWARDS)
    ]
    assert [rank_order(row["scores"]) for row in data] == [[1, 3, 0, 2], [1, 2, 0], [1, 0]]
    assert load_from_disk(str(tmp_path / "ranked")).to_list() == data.to_list()
    assert [json.loads(line) for line in (tmp_path / "ranked.jsonl").read_text().splitlines()] == data.to_list()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["prompts"], summary["candidates"], summary["rows"], summary["requests"]) == (3, 9, 3, 0)


def test_rank_reproduces_the_tiny_default_scores(tmp_path):
    """The tiny ranked set was scored with `reward_fn`: re-ranking its candidates gives back its scores."""
    rows = tiny_ranked_dataset().select(range(12)).to_list()
    source = write_jsonl(
        tmp_path / "candidates.jsonl", [{"prompt": r["prompt"], "completions": r["completions"]} for r in rows]
    )
    data = rank_candidates(source, reward=reward_fn, output_dir=tmp_path / "out")
    assert data["scores"] == [r["scores"] for r in rows]
    assert [rank_order(s) for s in data["scores"]] == [rank_order(r["scores"]) for r in rows]


def test_reward_model_checkpoint(tiny_path, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trl_rankalign.sampling.scorers import as_scorer

    AutoModelForSequenceClassification.from_pretrained(tiny_path, num_labels=1).save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(tiny_path).save_pretrained(tmp_path / "rm")
    data = rank_candidates(PROMPTS, CANDIDATES, reward=str(tmp_path / "rm"), output_dir=tmp_path / "out")
    direct = as_scorer(str(tmp_path / "rm"))(PROMPTS[:1] * 4, CANDIDATES[0])
    assert data[0]["scores"] == pytest.approx(direct, abs=1e-5)


def test_bad_inputs_are_clear_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="exactly one of"):
        rank_candidates(PROMPTS, CANDIDATES, output_dir=tmp_path)
    with pytest.raises(ValueError, match="no 'completions' column"):
        rank_candidates(PROMPTS, reward=reward_fn, output_dir=tmp_path)
    with pytest.raises(ValueError, match="must be >= 2 and >= the number of policies"):
        split_num_samples(1, 1)
    assert split_num_samples(5, 2) == [3, 2] and split_num_samples(4, 1) == [4]
    with pytest.raises(ValueError, match=r"row 0, field 'completions\[0\]'"):  # checked before any scoring
        rank_candidates(
            PROMPTS[:1], [[[{"role": "assistant", "content": "Hi"}]] * 2], reward=reward_fn, output_dir=tmp_path
        )
    with pytest.raises(ValueError, match="mix strings and chat-message lists"):
        rank_candidates([PROMPTS[0], [{"role": "user", "content": "Hi"}]], [["a", "b"]] * 2, reward=reward_fn,
                        output_dir=tmp_path)  # fmt: skip
    # empty completions are dropped and counted; a row left with < 2 candidates is dropped and counted
    data = rank_candidates(
        PROMPTS[:2], [[" ", " great", " awful"], [" great", ""]], reward=reward_fn, output_dir=tmp_path
    )
    assert data.to_list() == [{"prompt": PROMPTS[0], "completions": [" great", " awful"], "scores": [1.0, -1.0]}]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["empty_candidates"], summary["dropped_rows"], summary["rows"]) == (2, 1, 1)
    assert cli("--input", tmp_path / "missing.jsonl", "--output_dir", tmp_path, "--reward_fn", "x:y") == 1
    assert "error:" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------- BT fit


def test_bradley_terry_closed_form_and_mle():
    # Two items, 3 wins to 1 and no prior: p0 / p1 = 3, so the centred log-strengths are +-log(3) / 2.
    comparisons = [(0, 1, 1.0)] * 3 + [(1, 0, 1.0)]
    assert bradley_terry(2, comparisons, prior=0.0) == pytest.approx([math.log(3) / 2, -math.log(3) / 2])
    # A tie is half a win each: 2 wins + 2 ties vs 2 ties -> (2 + 1) / 1
    assert bradley_terry(2, [(0, 1, 1.0), (1, 0, 0.0), (0, 1, 0.5), (1, 0, 0.5)], prior=0) == pytest.approx(
        [math.log(3) / 2, -math.log(3) / 2]
    )
    # An undefeated item stays finite thanks to the prior, and the order follows the wins; the fit is the MLE.
    comparisons = [(0, 1, 1.0), (0, 2, 1.0), (1, 2, 1.0), (2, 1, 0.5), (0, 1, 1.0)]
    prior = 0.1
    log_p = np.array(bradley_terry(3, comparisons, prior=prior))
    assert np.all(np.isfinite(log_p)) and abs(log_p.sum()) < 1e-9 and rank_order(log_p.tolist()) == [0, 1, 2]
    p = np.exp(log_p)
    wins, games = np.full(3, prior), np.full((3, 3), prior) - prior * np.eye(3)
    for i, j, s in comparisons:
        wins[i], wins[j] = wins[i] + s, wins[j] + 1 - s
        games[i, j] += 1
        games[j, i] += 1
    expected_wins = (games * p[:, None] / (p[:, None] + p[None, :])).sum(axis=1)
    np.testing.assert_allclose(expected_wins, wins, atol=1e-8)  # stationarity of the (prior-augmented) likelihood
    assert bradley_terry(3, [], prior=0.1) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="never won"):
        bradley_terry(2, [(0, 1, 1.0)], prior=0.0)


# ----------------------------------------------------------------------------------------------------- LLM judge


def client(server, **kwargs):
    return JudgeClient(
        server.base_url, "stub-judge", api_key_env=None, **{"timeout": 5, "max_retries": 1, "backoff": 0.01, **kwargs}
    )


def between(text, start, end):
    return text.split(start)[1].split(end)[0].strip()


def rating_judge(request):
    """Helpfulness 3 + reward (clipped to 1..5), the other aspects 4; garbage for an answer that mentions 'mystery'."""
    text = request["messages"][-1]["content"]
    answer = between(text, "[The Start of the Response]", "[The End of the Response]")
    if "mystery" in answer:
        return 200, "This response defies rating."
    ratings = {aspect: 4 for aspect in DEFAULT_ASPECTS} | {"helpfulness": min(5, max(1, 3 + true_reward(answer)))}
    return 200, f"The response is what it is.\n{json.dumps(ratings)}"


def pairwise_judge(request):
    """Prefers the higher true reward ([[C]] when equal); garbage whenever assistant A's answer mentions 'mystery'."""
    text = request["messages"][-1]["content"]
    a = between(text, "[The Start of Assistant A's Answer]", "[The End of Assistant A's Answer]")
    b = between(text, "[The Start of Assistant B's Answer]", "[The End of Assistant B's Answer]")
    if "mystery" in a:
        return 200, "Both are fine, I think."
    ra, rb = true_reward(a), true_reward(b)
    return 200, "Reasoning...\n" + ("[[A]]" if ra > rb else "[[B]]" if rb > ra else "[[C]]")


def test_rating_mode_parses_ratings_and_drops_garbage(judge_server, tmp_path):
    judge_server.reply = rating_judge
    data = rank_candidates(PROMPTS, CANDIDATES, judge=client(judge_server), judge_mode="rating", output_dir=tmp_path)
    assert len(judge_server.requests) == 9  # one per candidate
    first = judge_server.requests[0]["messages"]
    assert first[0]["role"] == "system" and all(a in first[1]["content"] for a in DEFAULT_ASPECTS)
    assert DEFAULT_ASPECTS["honesty"] in first[1]["content"]
    # overall = mean of (clip(3 + r), 4, 4, 4); the 'mystery' hotel is dropped; the museum row keeps 1 -> dropped
    mean = lambda r: (min(5, max(1, 3 + r)) + 12) / 4  # noqa: E731
    assert data.to_list() == [
        {"prompt": PROMPTS[0], "completions": CANDIDATES[0], "scores": [mean(r) for r in REWARDS[0]]},
        {"prompt": PROMPTS[1], "completions": CANDIDATES[1][:2], "scores": [mean(-2.0), mean(1.0)]},
    ]
    assert rank_order(data[0]["scores"]) == [1, 3, 0, 2]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {k: summary[k] for k in ("requests", "parse_errors", "dropped_candidates", "dropped_rows", "rows")} == {
        "requests": 9, "parse_errors": 2, "dropped_candidates": 2, "dropped_rows": 1, "rows": 2,
    }  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "verdicts.jsonl").read_text().splitlines()]
    hotel = next(r for r in records if r["index"] == 1)
    assert hotel["scores"][2] is None and hotel["judgments"][2]["ratings"] is None and hotel["parse_errors"] == 1
    assert "defies rating" in hotel["judgments"][2]["reply"]


def test_custom_aspects_and_rubric(judge_server, tmp_path):
    judge_server.reply = lambda request: (200, '{"clarity": 2, "tone": 5}')
    aspects = {"clarity": "Is it easy to read?", "tone": "Is it polite?"}
    data = rank_candidates(
        PROMPTS[:1], CANDIDATES[:1], judge=client(judge_server), aspects=aspects, output_dir=tmp_path
    )
    assert data[0]["scores"] == [3.5] * 4
    assert "- tone: Is it polite?" in judge_server.requests[0]["messages"][-1]["content"]


def test_pairwise_mode_both_orders_and_bradley_terry(judge_server, tmp_path):
    judge_server.reply = pairwise_judge
    data = rank_candidates(PROMPTS, CANDIDATES, judge=client(judge_server), judge_mode="pairwise", output_dir=tmp_path)
    assert len(judge_server.requests) == 2 * (6 + 3 + 1)  # both orders of K(K-1)/2 pairs
    # the order of the true rewards; the 'mystery' candidates are judged in one order only, still ranked
    assert [rank_order(row["scores"]) for row in data] == [[1, 3, 0, 2], [1, 2, 0], [1, 0]]
    assert all(abs(sum(row["scores"])) < 1e-9 for row in data)  # centred log-strengths
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["parse_errors"], summary["dropped_candidates"], summary["dropped_rows"]) == (3, 0, 0)
    records = {r["index"]: r for r in map(json.loads, (tmp_path / "verdicts.jsonl").read_text().splitlines())}
    assert [(j["a"], j["b"], j["verdict"]) for j in records[2]["judgments"]] == [(0, 1, "B"), (1, 0, None)]
    assert records[0]["judgments"][0] == {"a": 0, "b": 1, "reply": "Reasoning...\n[[B]]", "verdict": "B"}


def test_pairwise_garbage_everywhere_drops_the_row(judge_server, tmp_path):
    judge_server.reply = lambda request: (200, "no idea")
    with pytest.raises(ValueError, match="Every row was dropped"):
        rank_candidates(
            PROMPTS[2:], CANDIDATES[2:], judge=client(judge_server), judge_mode="pairwise", output_dir=tmp_path
        )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["parse_errors"], summary["dropped_candidates"], summary["dropped_rows"]) == (2, 2, 1)


@pytest.mark.parametrize(
    "mode, per_prompt, garbled", [("rating", [4, 3, 2], 2), ("pairwise", [12, 6, 2], 3)], ids=["rating", "pairwise"]
)
def test_interrupted_run_resumes_without_asking_again(judge_server, tmp_path, capsys, mode, per_prompt, garbled):
    """The endpoint dies after the first prompt: the CLI reports it, the rerun asks only for the other prompts; a
    finished run asks again only for the verdicts it could not parse (never final)."""
    source = write_jsonl(
        tmp_path / "candidates.jsonl", [{"prompt": p, "completions": c} for p, c in zip(PROMPTS, CANDIDATES)]
    )
    healthy = rating_judge if mode == "rating" else pairwise_judge
    judge_server.reply = lambda request: healthy(request) if len(judge_server.requests) <= per_prompt[0] else (500, "")
    argv = ["--input", source, "--output_dir", tmp_path / "out", "--judge_base_url", judge_server.base_url,
            "--judge_model", "stub", "--judge_mode", mode, "--judge_workers", 1, "--judge_max_retries", 1,
            "--judge_backoff", 0.01]  # fmt: skip
    assert cli(*argv) == 1
    assert "failed after 2 attempts; last error: HTTP 500" in capsys.readouterr().err
    assert [json.loads(line)["index"] for line in (tmp_path / "out" / "verdicts.jsonl").read_text().splitlines()] == [
        0
    ]
    judge_server.requests.clear()
    judge_server.reply = healthy
    assert cli(*argv) == 0
    assert len(judge_server.requests) == sum(per_prompt[1:])  # prompts 1 and 2 only
    assert json.loads(capsys.readouterr().out.split("\n}")[0] + "\n}")["requests_this_run"] == sum(per_prompt[1:])
    judge_server.requests.clear()
    assert cli(*argv) == 0 and len(judge_server.requests) == garbled  # finished: only the garbled verdicts again
    assert all("mystery" in r["messages"][-1]["content"] for r in judge_server.requests)
    data = load_from_disk(str(tmp_path / "out" / "ranked"))
    validate_ranked_dataset(data)
    assert rank_order(data[0]["scores"]) == [1, 3, 0, 2]


# ----------------------------------------------------------------------------------------------------- generation


@pytest.mark.parametrize("num_policies", [1, 2])
def test_generate_rank_then_rankdpo_accepts_it(tiny_path, tmp_path, num_policies):
    from trl_rankalign import RankDPOConfig, RankDPOTrainer

    policies = [tiny_path] * num_policies
    data = rank_candidates(
        PROMPTS + ["Your thoughts on the salad:"],
        policies=policies,
        num_samples=3,
        reward=reward_fn,
        output_dir=tmp_path / "ranked",
        batch_size=2,
        generation_kwargs={"max_new_tokens": 8},
    )
    files = sorted(p.name for p in (tmp_path / "ranked" / "candidates").iterdir())
    assert len(files) == num_policies
    counts = [
        len(row["completions"])
        for f in files
        for row in map(json.loads, (tmp_path / "ranked" / "candidates" / f).open())
    ]
    assert counts == ([3] * 4 if num_policies == 1 else [2] * 4 + [1] * 4)  # K = 3, split 2 + 1 between two policies
    summary = json.loads((tmp_path / "ranked" / "summary.json").read_text())
    assert summary["candidates"] + summary["empty_candidates"] == 12 and summary["rows"] == len(data) > 0
    validate_ranked_dataset(data)
    for row in data:
        assert row["scores"] == reward_fn(None, row["completions"])
    args = cpu_config(RankDPOConfig, tmp_path / "rankdpo", max_steps=1, per_device_train_batch_size=2)
    trainer = RankDPOTrainer(model=tiny_path, args=args, train_dataset=data)
    trainer.train()
    assert any("loss" in entry for entry in trainer.state.log_history)
