"""Evaluation: answers generation (resumable), win rates (reward + LLM judge via a local stub), text metrics, exports,
plots, and the `eval` CLI. Everything runs on the tiny default and a stub HTTP server on 127.0.0.1."""

import argparse
import json
from pathlib import Path

import pytest
import sacrebleu
from conftest import cpu_config
from rouge_score import rouge_scorer

from trl_rankalign.cli.eval import add_eval_parser, run_eval
from trl_rankalign.evaluation import (
    JudgeClient,
    JudgeRequestError,
    RateLimiter,
    VerdictParseError,
    answers_text_metrics,
    bootstrap_win_rate,
    combine_orders,
    compute_text_metrics,
    generate_answers,
    llm_judge_win_rate,
    load_answers,
    load_prompts,
    parse_aspect_ratings,
    parse_pairwise_verdict,
    parse_rating,
    reward_win_rate,
    to_alpaca_eval,
    to_mt_bench,
)
from trl_rankalign.tiny.language import reward_fn


FIXTURES = Path(__file__).parent / "fixtures"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GOOD, BAD = " The pasta was great and fresh.", " The pasta was awful and cold."  # true rewards +2 / -2


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def answers_rows(prompts, completions):
    return [{"index": i, "prompt": p, "completions": [c]} for i, (p, c) in enumerate(zip(prompts, completions))]


def cli(*argv):
    parser = argparse.ArgumentParser(prog="trl-rankalign")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    return run_eval(parser.parse_args(["eval", *map(str, argv)]))


PROMPTS = [f"Review of the {thing}:" for thing in ("pasta", "hotel", "train ride", "museum")]


@pytest.fixture
def constructed_answers(tmp_path):
    """Model A beats B on prompts 0, 1, 3 (reward +2 vs -2) and loses on prompt 2: a win rate of exactly 3/4."""
    model = write_jsonl(tmp_path / "model_a.jsonl", answers_rows(PROMPTS, [GOOD, GOOD, BAD, GOOD]))
    baseline = write_jsonl(tmp_path / "model_b.jsonl", answers_rows(PROMPTS, [BAD, BAD, GOOD, BAD]))
    return model, baseline


# ----------------------------------------------------------------------------------------------------- win rate


def test_reward_win_rate_constructed_case(constructed_answers):
    model, baseline = constructed_answers
    result = reward_win_rate(model, baseline, reward_fn, num_resamples=2000, seed=3)
    assert (result.wins, result.ties, result.losses, result.errors, result.n) == (3, 0, 1, 0, 4)
    assert result.win_rate == 0.75
    assert (result.model, result.baseline, result.judge) == ("model_a", "model_b", "reward:reward_fn")
    assert [r["outcome"] for r in result.per_prompt] == ["win", "win", "loss", "win"]
    assert result.ci_low <= 0.75 <= result.ci_high and 0.0 <= result.ci_low < result.ci_high <= 1.0
    again = reward_win_rate(model, baseline, reward_fn, num_resamples=2000, seed=3)
    assert (again.ci_low, again.ci_high, again.bootstrap_mean) == (
        result.ci_low,
        result.ci_high,
        result.bootstrap_mean,
    )
    # the other way round is the complement; equal rewards within the tolerance are ties
    assert reward_win_rate(baseline, model, reward_fn).win_rate == 0.25
    tied = reward_win_rate(model, baseline, reward_fn, tie_tolerance=10.0)
    assert (tied.ties, tied.win_rate) == (4, 0.5)


def test_reward_model_checkpoint_win_rate(tiny_path, tmp_path, constructed_answers):
    """A sequence-classification checkpoint (random head on the tiny LM) goes through `judges.as_scorer`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    reward_model = AutoModelForSequenceClassification.from_pretrained(tiny_path, num_labels=1)
    reward_model.save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(tiny_path).save_pretrained(tmp_path / "rm")
    model, baseline = constructed_answers
    forward = reward_win_rate(model, baseline, str(tmp_path / "rm"), batch_size=4)
    backward = reward_win_rate(baseline, model, str(tmp_path / "rm"), batch_size=4)
    assert forward.n == 4 and forward.judge.startswith("reward:")
    assert forward.win_rate + backward.win_rate == pytest.approx(1.0)
    assert all(len(r["rewards"]) == 2 for r in forward.per_prompt)


def test_bootstrap_is_seeded_and_degenerate_cases():
    outcomes = [1.0, 0.5, 0.0, 1.0, 1.0]
    assert bootstrap_win_rate(outcomes, seed=1) == bootstrap_win_rate(outcomes, seed=1)
    assert bootstrap_win_rate([1.0] * 5) == (1.0, 1.0, 1.0)  # no spread, no interval
    mean, low, high = bootstrap_win_rate(outcomes, num_resamples=4000, seed=0)
    assert low < 0.7 < high and abs(mean - 0.7) < 0.02
    with pytest.raises(ValueError, match="every verdict was an error"):
        bootstrap_win_rate([])


def test_answers_must_cover_the_same_prompts(tmp_path, constructed_answers):
    model, _ = constructed_answers
    short = write_jsonl(tmp_path / "short.jsonl", answers_rows(PROMPTS[:3], [BAD] * 3))
    with pytest.raises(ValueError, match="different prompts"):
        reward_win_rate(model, short, reward_fn)
    other = write_jsonl(tmp_path / "other.jsonl", answers_rows(["Review of the zoo:"] + PROMPTS[1:], [BAD] * 4))
    with pytest.raises(ValueError, match="Prompt 0 differs"):
        reward_win_rate(model, other, reward_fn)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        reward_win_rate(tmp_path / "missing.jsonl", model, reward_fn)


@pytest.mark.parametrize(
    "first, second, expected",
    [
        ("A", "B", ("win", 1.0)),  # model wins in both orders
        ("A", "tie", ("win", 1.0)),  # a win and a tie
        ("tie", "B", ("win", 1.0)),
        ("A", "A", ("tie", 0.5)),  # judge always picks the first position: cancelled out
        ("tie", "tie", ("tie", 0.5)),
        ("B", "tie", ("loss", 0.0)),
        ("B", "A", ("loss", 0.0)),
        (None, "B", ("error", None)),  # a garbled verdict is never a win
    ],
)
def test_combine_orders(first, second, expected):
    assert combine_orders(first, second) == expected


# ----------------------------------------------------------------------------------------------------- generation


def test_generate_then_judge_end_to_end_with_the_cli(tiny_path, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    out = tmp_path / "answers"
    assert cli("generate", "--model", tiny_path, "--name", "tiny", "--prompts", prompts, "--output_dir", out,
               "--max_new_tokens", 8, "--batch_size", 2) == 0  # fmt: skip
    rows = load_answers(out / "tiny.jsonl")
    assert [r["prompt"] for r in rows] == PROMPTS and all(isinstance(r["completions"][0], str) for r in rows)
    # the untrained tiny model writes no sentiment words (reward 0): it beats a negative baseline (-2) everywhere
    assert all(reward_fn(None, r["completions"]) == [0.0] for r in rows)
    baseline = write_jsonl(tmp_path / "negative.jsonl", answers_rows(PROMPTS, [BAD] * 4))
    result_file = tmp_path / "win_rate.json"
    assert cli("win-rate", "--answers", out / "tiny.jsonl", "--baseline", baseline,
               "--reward-fn", "trl_rankalign.tiny.language:reward_fn", "--output", result_file) == 0  # fmt: skip
    result = json.loads(result_file.read_text())
    assert (result["wins"], result["win_rate"], len(result["per_prompt"])) == (4, 1.0, 4)
    assert "win rate 100.0%" in capsys.readouterr().out


def test_generation_resumes_after_an_interruption(tiny_path, tmp_path, monkeypatch):
    """A crash mid-run keeps the finished batches; the rerun generates only the rest and equals an unbroken run."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import trl_rankalign.sampling.generation as generation

    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_path), AutoTokenizer.from_pretrained(tiny_path)
    kwargs = dict(tokenizer=tokenizer, max_new_tokens=6, batch_size=2)
    prompts = load_prompts([{"prompt": p} for p in PROMPTS] + [{"prompt": [{"role": "user", "content": "Hi"}]}])
    reference = generate_answers(model, prompts, tmp_path / "full.jsonl", **kwargs)
    original, calls, crash = generation.generate_completions, [], [True]

    def flaky(*args, **kwargs):
        calls.append(len(args[2]))
        if len(calls) == 2 and crash[0]:
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(*args, **kwargs)

    monkeypatch.setattr(generation, "generate_completions", flaky)
    partial = tmp_path / "partial.jsonl"
    with pytest.raises(RuntimeError, match="simulated"):
        generate_answers(model, prompts, partial, **kwargs)
    assert [r["index"] for r in load_answers(partial)] == [0, 1]  # the first batch survived
    with open(partial, "a") as f:
        f.write('{"index": 2, "prom')  # and a half-written line is ignored
    calls.clear()
    crash[0] = False
    resumed = generate_answers(model, prompts, partial, **kwargs)
    assert calls == [2, 1]  # batches 1 and 2 only
    assert resumed == reference
    assert resumed[-1]["completions"][0][0]["role"] == "assistant"  # chat prompts give assistant messages


def test_bad_generation_inputs_give_clear_errors(tiny_path, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS[:2]])
    out = tmp_path / "answers"
    # a missing checkpoint is found before anything is generated, even when it comes second
    assert cli("generate", "--model", tiny_path, "--model", tmp_path / "no_such_ckpt", "--prompts", prompts,
               "--output_dir", out) == 1  # fmt: skip
    assert "no_such_ckpt" in capsys.readouterr().err and not (out / "tiny.jsonl").exists()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        generate_answers(str(tmp_path), ["x"], tmp_path / "a.jsonl")
    # empty prompt sets and missing columns
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    assert cli("generate", "--model", tiny_path, "--prompts", empty, "--output_dir", out) == 1
    assert "empty" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no 'question' column"):
        load_prompts(prompts, prompt_column="question")
    with pytest.raises(ValueError, match="row 1"):
        load_prompts([{"prompt": "ok"}, {"prompt": 3}])
    with pytest.raises(FileNotFoundError):
        load_prompts(tmp_path / "missing.jsonl")
    # an answers file from another prompt set is not silently reused
    write_jsonl(tmp_path / "old.jsonl", answers_rows(["Review of the zoo:"], ["x"]))
    with pytest.raises(ValueError, match="different prompt set"):
        generate_answers(tiny_path, load_prompts(prompts), tmp_path / "old.jsonl")


def test_load_prompts_sources(tmp_path):
    from datasets import Dataset

    rows = [
        {"question": "Q1", "answer": "A1", "question_id": 81},
        {"question": "Q2", "answer": "A2", "question_id": 82},
    ]
    expected = [
        {"question_id": 81, "prompt": "Q1", "reference": "A1"},
        {"question_id": 82, "prompt": "Q2", "reference": "A2"},
    ]
    (tmp_path / "p.json").write_text(json.dumps(rows))
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    for source in (rows, tmp_path / "p.json", write_jsonl(tmp_path / "p.jsonl", rows), tmp_path / "ds"):
        assert load_prompts(source, "question", "answer") == expected
    assert load_prompts(rows, "question", "answer", limit=1) == expected[:1]


# ----------------------------------------------------------------------------------------------------- LLM judge


def content_judge(request):
    """Prefers the answer holding 'great'; replies garbage when the question mentions 'museum'."""
    text = request["messages"][-1]["content"]
    if "museum" in text:
        return 200, "Both answers are fine, I cannot decide.", 0.0
    a = text.split("[The Start of Assistant A's Answer]")[1].split("[The End of Assistant A's Answer]")[0]
    return 200, f"Reasoning...\nVerdict: {'[[A]]' if 'great' in a else '[[B]]'}", 0.0


def client(server, **kwargs):
    kwargs = {"timeout": 5.0, "max_retries": 1, "backoff": 0.01, **kwargs}
    return JudgeClient(server.base_url, "stub-judge", api_key_env="EVAL_TEST_JUDGE_KEY", **kwargs)


def test_llm_judge_both_orders_parsed_and_garbage_is_an_error(judge_server, constructed_answers, monkeypatch):
    monkeypatch.setenv("EVAL_TEST_JUDGE_KEY", "sk-test")
    judge_server.reply = content_judge
    model, baseline = constructed_answers  # prompt 3 is the museum: garbage verdicts
    result = llm_judge_win_rate(model, baseline, client(judge_server), max_workers=2, seed=0)
    assert len(judge_server.requests) == 8  # 4 prompts x 2 orders
    assert {r["path"] for r in judge_server.requests} == {"/v1/chat/completions"}
    assert {r["auth"] for r in judge_server.requests} == {"Bearer sk-test"}
    assert all(r["model"] == "stub-judge" and r["messages"][0]["role"] == "system" for r in judge_server.requests)
    pasta = [
        r["messages"][-1]["content"]
        for r in judge_server.requests
        if "Review of the pasta" in r["messages"][-1]["content"]
    ]
    assert len(pasta) == 2 and pasta[0].index(GOOD.strip()) != pasta[1].index(GOOD.strip())  # both orders
    assert (result.wins, result.ties, result.losses, result.errors, result.n) == (2, 0, 1, 1, 3)
    assert result.win_rate == pytest.approx(2 / 3)
    assert result.per_prompt[3] == {"index": 3, "outcome": "error", "score": None, "verdicts": [None, None]}
    assert result.per_prompt[0]["verdicts"] == ["A", "B"]


def test_position_biased_judge_gives_ties(judge_server, constructed_answers):
    judge_server.reply = lambda request: (200, "[[A]]", 0.0)
    result = llm_judge_win_rate(*constructed_answers, client(judge_server), max_workers=1)
    assert (result.ties, result.win_rate) == (4, 0.5)


def test_only_garbage_is_a_clear_error(judge_server, constructed_answers, capsys):
    judge_server.reply = lambda request: (200, "lol", 0.0)
    with pytest.raises(ValueError, match="every verdict was an error"):
        llm_judge_win_rate(*constructed_answers, client(judge_server))
    judge_server.reply = lambda request: (200, {"object": "error"}, 0.0)  # not a chat completion at all
    with pytest.raises(JudgeRequestError, match="not a chat completion"):
        client(judge_server).chat([{"role": "user", "content": "hi"}])


def test_slow_endpoint_times_out_retries_then_fails_clearly(judge_server):
    judge_server.reply = lambda request: (200, "[[A]]", 3.0)
    slow = client(judge_server, timeout=0.2, max_retries=2)
    with pytest.raises(JudgeRequestError, match=r"failed after 3 attempts; last error: timed out after 0.2 s"):
        slow.chat([{"role": "user", "content": "hi"}])
    assert len(judge_server.requests) == 3


def test_retryable_and_fatal_http_errors(judge_server):
    replies = iter([(503, {"error": "busy"}, 0.0), (429, {"error": "slow down"}, 0.0), (200, "[[B]]", 0.0)])
    judge_server.reply = lambda request: next(replies)
    assert client(judge_server, max_retries=2).chat([{"role": "user", "content": "hi"}]) == "[[B]]"
    judge_server.requests.clear()
    judge_server.reply = lambda request: (401, {"error": "bad key"}, 0.0)
    with pytest.raises(JudgeRequestError, match=r"HTTP 401.*EVAL_TEST_JUDGE_KEY"):
        client(judge_server, max_retries=3).chat([{"role": "user", "content": "hi"}])
    assert len(judge_server.requests) == 1  # not retried
    with pytest.raises(JudgeRequestError, match="connection failed"):
        JudgeClient("http://127.0.0.1:9/v1", "m", timeout=1, max_retries=0).chat([{"role": "user", "content": "x"}])


def test_judge_failure_keeps_judgments_and_rerun_continues(judge_server, constructed_answers, tmp_path, capsys):
    """The endpoint dies after two prompts: the CLI reports it, the cache keeps them, the rerun asks only for the rest."""
    model, baseline = constructed_answers
    healthy = content_judge
    judge_server.reply = lambda request: healthy(request) if len(judge_server.requests) <= 4 else (500, {}, 0.0)
    argv = ["win-rate", "--answers", model, "--baseline", baseline, "--judge_base_url", judge_server.base_url,
            "--judge_model", "stub", "--judge_workers", 1, "--judge_max_retries", 1, "--judge_backoff", 0.01]  # fmt: skip
    assert cli(*argv) == 1
    assert "failed after 2 attempts; last error: HTTP 500" in capsys.readouterr().err
    cache = tmp_path / "model_a.vs.model_b.judgments.jsonl"
    assert [r["index"] for r in map(json.loads, cache.read_text().splitlines())] == [0, 1]
    judge_server.requests.clear()
    judge_server.reply = healthy
    assert cli(*argv, "--output", tmp_path / "result.json") == 0
    assert len(judge_server.requests) == 4  # prompts 2 and 3 only
    result = json.loads((tmp_path / "result.json").read_text())
    assert (result["wins"], result["losses"], result["errors"]) == (2, 1, 1)


def test_rate_limiter_spaces_requests():
    now, sleeps = [0.0], []

    def sleep(seconds):
        sleeps.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        limiter.acquire()
    assert sleeps == [0.25] * 4 and now[0] == 1.0
    RateLimiter(None).acquire()  # unlimited: no wait
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_verdict_parsers():
    assert parse_pairwise_verdict("A is more detailed. [[A]]") == "A"
    assert parse_pairwise_verdict("Final verdict: [[ B ]]") == "B"
    assert parse_pairwise_verdict("[[C]]") == parse_pairwise_verdict("[[tie]]") == "tie"
    for garbage in ("A is better", "[[A]] or maybe [[B]]", "", "[A]"):
        with pytest.raises(VerdictParseError):
            parse_pairwise_verdict(garbage)
    assert parse_rating("Rating: [[4]]") == 4.0
    assert parse_rating("[[2]] ... on reflection [[3.5]]") == 3.5
    for garbage in ("four", "[[7]]", "[[0]]"):
        with pytest.raises(VerdictParseError):
            parse_rating(garbage)
    reply = 'Thoughts {not json}. Ratings: {"helpfulness": 4, "honesty": 5, "note": "x"}'
    assert parse_aspect_ratings(reply, ["helpfulness", "honesty"]) == {"helpfulness": 4.0, "honesty": 5.0}
    for garbage in ('{"helpfulness": 4}', '{"helpfulness": 9, "honesty": 1}', "no json", '{"helpfulness": true}'):
        with pytest.raises(VerdictParseError):
            parse_aspect_ratings(garbage, ["helpfulness", "honesty"])


# ----------------------------------------------------------------------------------------------------- text metrics


def test_text_metrics_equal_the_libraries():
    rows = [json.loads(line) for line in (FIXTURES / "eval_translation.jsonl").read_text().splitlines()]
    hypotheses = [r["hypothesis"] for r in rows]
    single = [r["reference"] if isinstance(r["reference"], str) else r["reference"][0] for r in rows]
    ours = compute_text_metrics(hypotheses, single)
    assert ours["bleu"] == sacrebleu.corpus_bleu(hypotheses, [single]).score
    assert ours["chrf"] == sacrebleu.corpus_chrf(hypotheses, [single]).score
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        expected = 100 * sum(scorer.score(ref, hyp)[key].fmeasure for ref, hyp in zip(single, hypotheses)) / 5
        assert ours[key] == pytest.approx(expected, abs=1e-12)
    assert 0 < ours["bleu"] < 100 and ours["num_examples"] == 5 and ours["bleu_signature"].startswith("nrefs:1")
    # several references per example (row 1 has two): sacrebleu's reference streams, rouge-score's score_multi
    multi = compute_text_metrics(hypotheses, [r["reference"] for r in rows], metrics=["bleu", "chrf", "rouge"])
    streams = [single, [None, rows[1]["reference"][1], None, None, None]]
    assert multi["bleu"] == sacrebleu.corpus_bleu(hypotheses, streams).score
    assert multi["chrf"] == sacrebleu.corpus_chrf(hypotheses, streams).score
    best = max(scorer.score(ref, hypotheses[1])["rouge1"].fmeasure for ref in rows[1]["reference"])
    assert multi["rouge1"] >= ours["rouge1"] and best >= scorer.score(single[1], hypotheses[1])["rouge1"].fmeasure
    chrf_pp = compute_text_metrics(hypotheses, single, metrics=["chrf"], chrf_word_order=2)
    assert chrf_pp["chrf"] == sacrebleu.corpus_chrf(hypotheses, [single], word_order=2).score
    assert compute_text_metrics(single, single, metrics=["bleu"])["bleu"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="Unknown metrics"):
        compute_text_metrics(hypotheses, single, metrics=["meteor"])
    with pytest.raises(ValueError, match="5 predictions but 4 references"):
        compute_text_metrics(hypotheses, single[:4])


def test_text_metrics_from_answers_and_cli(tmp_path, capsys):
    rows = [json.loads(line) for line in (FIXTURES / "eval_translation.jsonl").read_text().splitlines()]
    answers = write_jsonl(
        tmp_path / "mt.jsonl", answers_rows([r["prompt"] for r in rows], [r["hypothesis"] for r in rows])
    )
    prompts = load_prompts(FIXTURES / "eval_translation.jsonl")
    direct = compute_text_metrics([r["hypothesis"] for r in rows], [r["reference"] for r in rows])
    assert answers_text_metrics(answers, prompts) == direct
    assert cli("text-metrics", "--answers", answers, "--prompts", FIXTURES / "eval_translation.jsonl",
               "--output", tmp_path / "m.json") == 0  # fmt: skip
    assert json.loads((tmp_path / "m.json").read_text()) == pytest.approx(direct)
    no_refs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": r["prompt"]} for r in rows])
    assert cli("text-metrics", "--answers", answers, "--prompts", no_refs) == 1
    assert "has no reference" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------- exports


def test_alpaca_eval_export(tmp_path, constructed_answers):
    model, _ = constructed_answers
    records = to_alpaca_eval(model, "rankdpo-tiny", tmp_path / "alpaca" / "outputs.json", dataset="helpful_base")
    written = json.loads((tmp_path / "alpaca" / "outputs.json").read_text())
    assert written == records and len(written) == 4
    assert written[0] == {
        "instruction": PROMPTS[0],
        "output": GOOD.strip(),
        "generator": "rankdpo-tiny",
        "dataset": "helpful_base",
    }
    chat = answers_rows([[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]],
                        [[{"role": "assistant", "content": " Hello."}]])  # fmt: skip
    assert to_alpaca_eval(chat, "m", tmp_path / "chat.json") == [
        {"instruction": "Hi?", "output": "Hello.", "generator": "m"}
    ]


def test_mt_bench_export_via_cli(tmp_path, constructed_answers):
    model, _ = constructed_answers
    prompts = write_jsonl(tmp_path / "q.jsonl", [{"question_id": 81 + i, "prompt": p} for i, p in enumerate(PROMPTS)])
    bench = tmp_path / "mt_bench"
    assert cli("export", "--answers", model, "--format", "mt_bench", "--output", bench, "--prompts", prompts) == 0
    lines = [json.loads(line) for line in (bench / "model_answer" / "model_a.jsonl").read_text().splitlines()]
    assert [line["question_id"] for line in lines] == [81, 82, 83, 84]
    for line, answer in zip(lines, [GOOD, GOOD, BAD, GOOD]):
        assert set(line) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
        assert line["model_id"] == "model_a" and isinstance(line["tstamp"], float) and line["answer_id"]
        assert line["choices"] == [{"index": 0, "turns": [answer.strip()]}]
    assert len({line["answer_id"] for line in lines}) == 4
    path = to_mt_bench(model, "other", bench)  # default question ids: index + 1
    assert [json.loads(line)["question_id"] for line in open(path)] == [1, 2, 3, 4]


# ----------------------------------------------------------------------------------------------------- plots


def synthetic_state():
    history = []
    for step in range(1, 6):
        entry = {"step": step, "loss": 1.0 / step, "rewards/margins": 0.1 * step, "rewards/accuracies": 0.5}
        entry.update({f"rewards/rank_{k}": 0.1 * step * (4 - k) for k in (1, 2, 3, 10)})
        entry.update({"ranking/pairwise_accuracy": 0.5 + 0.05 * step, "ranking/kendall_tau": 0.1 * step})
        history.append(entry)
    history.append({"step": 5, "eval_loss": 0.3, "eval_rewards/margins": 0.4, "eval_ranking/kendall_tau": 0.3})
    history.append({"step": 5, "train_runtime": 1.0})
    return {"global_step": 5, "log_history": history}


def test_plots_from_a_synthetic_state(tmp_path):
    from trl_rankalign.evaluation.plots import _keys, plot_training_curves

    state = synthetic_state()
    assert _keys(state["log_history"], [r"^rewards/rank_(\d+)$"]) == [f"rewards/rank_{k}" for k in (1, 2, 3, 10)]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "trainer_state.json").write_text(json.dumps(state))
    written = plot_training_curves(tmp_path / "run", tmp_path / "plots")
    assert sorted(written) == ["kendall_tau", "loss", "rank_rewards", "ranking_accuracy", "reward_margins"]
    for path in written.values():
        assert Path(path).read_bytes()[:8] == PNG_MAGIC and Path(path).stat().st_size > 5000
    # an SFT or reward run logs the loss only: that one curve is drawn
    sft = {"log_history": [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.8}, {"step": 2, "eval_loss": 0.9}]}
    assert sorted(plot_training_curves(sft, tmp_path / "sft")) == ["loss"]
    with pytest.raises(ValueError, match="Neither the loss nor any ranking metric"):
        plot_training_curves({"log_history": [{"step": 1, "learning_rate": 1e-3}]}, tmp_path / "x")
    with pytest.raises(ValueError, match="no log_history"):
        plot_training_curves({"log_history": []}, tmp_path / "x")
    with pytest.raises(FileNotFoundError):
        plot_training_curves(tmp_path / "nothing_here", tmp_path / "x")


def test_plots_from_a_real_tiny_training_run(tiny_path, tmp_path, capsys):
    from trl_rankalign import RankDPOConfig, RankDPOTrainer
    from trl_rankalign.tiny import tiny_ranked_dataset

    data = tiny_ranked_dataset().select(range(12))
    args = cpu_config(RankDPOConfig, tmp_path / "run", max_steps=3, per_device_train_batch_size=4,
                      eval_strategy="steps", eval_steps=3)  # fmt: skip
    trainer = RankDPOTrainer(
        model=tiny_path, args=args, train_dataset=data.select(range(8)), eval_dataset=data.select(range(8, 12))
    )
    trainer.train()
    trainer.save_state()
    capsys.readouterr()
    assert cli("plot", "--trainer_state", tmp_path / "run", "--output_dir", tmp_path / "plots") == 0
    written = json.loads(capsys.readouterr().out)
    assert sorted(written) == ["kendall_tau", "loss", "rank_rewards", "ranking_accuracy", "reward_margins"]
    for path in written.values():
        assert Path(path).read_bytes()[:8] == PNG_MAGIC
    assert cli("plot", "--trainer_state", tmp_path / "missing", "--output_dir", tmp_path / "p") == 1
