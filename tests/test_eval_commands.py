"""The evaluation commands of the source's plan, end to end through `trl-rankalign eval`: multi-turn MT-Bench answers,
export and grading; few-shot baselines; agreement with human preferences; per-round plots."""

import argparse
import json
from pathlib import Path

from trl_rankalign.cli.eval import add_eval_parser, run_eval


FIXTURES = Path(__file__).resolve().parent / "fixtures"


def cli(*argv) -> int:
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    return run_eval(parser.parse_args(["eval", *map(str, argv)]))


def test_mt_bench_two_turns_export_and_grading(tiny_path, tmp_path, judge_server):
    questions = FIXTURES / "mt_bench_questions.jsonl"
    argv = ["generate", "--model", tiny_path, "--name", "tiny", "--prompts", questions, "--multi_turn"]
    assert cli(*argv, "--output_dir", tmp_path, "--max_new_tokens", "6") == 0
    rows = [json.loads(line) for line in (tmp_path / "tiny.jsonl").read_text().splitlines()]
    assert [len(r["answers"]) for r in rows] == [2, 2] and rows[0]["question_id"] == 81

    assert (
        cli("export", "--answers", tmp_path / "tiny.jsonl", "--format", "mt_bench", "--output", tmp_path / "bench")
        == 0
    )
    exported = [json.loads(x) for x in (tmp_path / "bench" / "model_answer" / "tiny.jsonl").read_text().splitlines()]
    assert [len(line["choices"][0]["turns"]) for line in exported] == [2, 2]

    judge_server.reply = lambda request: (200, "Rating: [[7]]")
    output = tmp_path / "mt_bench.json"
    argv = ["mt-bench", "--answers", tmp_path / "tiny.jsonl", "--judge_base_url", judge_server.base_url]
    assert cli(*argv, "--judge_model", "stub", "--judge_api_key_env", "", "--output", output) == 0
    result = json.loads(output.read_text())
    assert result["per_turn"] == {"1": 7.0, "2": 7.0} and result["judged"] == 4


def test_few_shot_baseline_answers_stop_at_the_next_example(tiny_path, tmp_path):
    shots = tmp_path / "shots.jsonl"
    shots.write_text(
        "".join(json.dumps({"prompt": f"Question {i}?", "completion": f"Answer {i}."}) + "\n" for i in range(2))
    )
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Review of the soup:"}) + "\n")
    argv = ["generate", "--model", tiny_path, "--name", "base", "--prompts", prompts, "--output_dir", tmp_path]
    argv += ["--few_shot", "2", "--few_shot_examples", shots, "--max_new_tokens", "24", "--do_sample", "--seed", "1"]
    assert cli(*argv) == 0
    (row,) = [json.loads(line) for line in (tmp_path / "base.jsonl").read_text().splitlines()]
    assert row["prompt"].startswith("Human: Question 0?\n\nAssistant: Answer 0.") and row["prompt"].endswith(
        "Assistant:"
    )
    assert all("Human:" not in c for c in row["completions"])
    assert (
        cli("generate", "--model", tiny_path, "--prompts", prompts, "--output_dir", tmp_path, "--few_shot", "2") == 1
    )


def test_agreement_command_writes_json_and_chart(tmp_path):
    comparisons = tmp_path / "human.jsonl"
    rows = [
        {
            "prompt": "Summarise: the cat sat.",
            "chosen": "The cat sat.",
            "rejected": "A dog ran.",
            "reference": "A cat sat.",
        },
        {"prompt": "Summarise: rain fell.", "chosen": "It rained.", "rejected": "Sun.", "reference": "Rain fell."},
    ]
    comparisons.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = tmp_path / "agreement.json"
    argv = ["agreement", "--comparisons", comparisons, "--judges", "chrf", "rouge", "--output", output]
    assert cli(*argv, "--reward_fn", "trl_rankalign.tiny.language:reward_fn") == 0
    result = json.loads(output.read_text())
    assert set(result) == {"chrf", "rouge", "reward"} and result["chrf"]["agreement"] == 1.0
    assert output.with_suffix(".png").stat().st_size > 0
    assert cli("agreement", "--comparisons", comparisons, "--output", output) == 1  # no judge named


def test_plot_rounds_command(tmp_path):
    cut = '{"round": 1, "mean_rew'  # a write interrupted mid-line: skipped (and redone by `iterate`), never a crash
    (tmp_path / "rounds.jsonl").write_text(json.dumps({"round": 0, "mean_reward": 0.1, "lists": 3}) + "\n" + cut)
    assert cli("plot", "--rounds", tmp_path, "--output_dir", tmp_path / "plots") == 0
    assert (tmp_path / "plots" / "round_mean_reward.png").is_file()


def test_mt_bench_command_writes_fastchats_layout(tmp_path, judge_server):
    rows = [{"question_id": 81, "category": "writing", "turns": ["q1", "q2"], "answers": ["a1", "a2"]}]
    (tmp_path / "ours.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    baseline = {"question_id": 81, "answer_id": "x", "model_id": "gpt-3.5-turbo", "tstamp": 1.0}
    baseline["choices"] = [{"index": 0, "turns": ["b1", "b2"]}]
    (tmp_path / "gpt-3.5-turbo.jsonl").write_text(json.dumps(baseline) + "\n")  # FastChat's answer schema
    judge_server.reply = lambda request: (200, "[[A]] Rating: [[6]]")
    common = [
        "--answers",
        tmp_path / "ours.jsonl",
        "--judge_base_url",
        judge_server.base_url,
        "--judge_model",
        "gpt-4",
    ]
    common += ["--judge_api_key_env", "", "--judge_prompts", FIXTURES / "fastchat_judge_prompts.jsonl"]
    assert cli("mt-bench", *common, "--output_dir", tmp_path / "bench") == 0
    single = tmp_path / "bench" / "model_judgment" / "gpt-4_single.jsonl"
    assert [json.loads(x)["score"] for x in single.read_text().splitlines()] == [6, 6]
    assert (
        cli("mt-bench", *common, "--output_dir", tmp_path / "bench", "--baseline", tmp_path / "gpt-3.5-turbo.jsonl")
        == 0
    )
    pair = [
        json.loads(x) for x in (tmp_path / "bench" / "model_judgment" / "gpt-4_pair.jsonl").read_text().splitlines()
    ]
    assert [(p["model_1"], p["model_2"], p["g1_winner"], p["g2_winner"]) for p in pair] == [
        ("ours", "gpt-3.5-turbo", "model_1", "model_2")
    ] * 2  # A in both orders: a tie by FastChat's rule
    assert all(r["max_tokens"] == 2048 for r in judge_server.requests)


def test_export_and_eval_refusals(tmp_path, capsys):
    answers = tmp_path / "ours.jsonl"
    answers.write_text(json.dumps({"index": 0, "prompt": "Hi", "completions": ["# Title\n- **a**"]}) + "\n")
    bench = tmp_path / "bench"
    assert (
        cli("export", "--answers", answers, "--format", "mt_bench", "--output", bench, "--model_name", "../../x") == 1
    )
    assert not (tmp_path.parent / "x.jsonl").exists() and "error:" in capsys.readouterr().err
    # Arena-Hard: without uids there is nothing gen_judgment.py would judge
    assert cli("export", "--answers", answers, "--format", "arena_hard", "--output", bench) == 1
    assert "uid" in capsys.readouterr().err
    prompts = tmp_path / "question.jsonl"
    prompts.write_text(json.dumps({"uid": "u7", "category": "hard_prompt", "prompt": "Hi", "dataset": "oasst"}) + "\n")
    assert cli("export", "--answers", answers, "--format", "arena_hard", "--output", bench, "--prompts", prompts) == 0
    (line,) = [json.loads(x) for x in (bench / "model_answer" / "ours.jsonl").read_text().splitlines()]
    assert line["uid"] == "u7" and line["metadata"]["header_count"]["h1"] == 1
    assert line["metadata"]["list_count"] == {"ordered": 0, "unordered": 1}
    assert line["metadata"]["bold_count"] == {"**": 1, "__": 0} and line["metadata"]["token_len"] > 0
    # AlpacaEval: the prompt set's own `dataset` column per row
    output = tmp_path / "alpaca.json"
    assert (
        cli("export", "--answers", answers, "--format", "alpaca_eval", "--output", output, "--prompts", prompts) == 0
    )
    assert json.loads(output.read_text())[0]["dataset"] == "oasst"
    # a negative --limit and an --output_dir that is a file: one error line each
    capsys.readouterr()
    argv = ["generate", "--model", "x", "--prompts", prompts, "--output_dir", tmp_path / "answers", "--limit", "-1"]
    assert cli(*argv) == 1
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert cli("generate", "--model", "x", "--prompts", prompts, "--output_dir", answers) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "is a file" in err and err.strip().count("\n") == 0


def test_a_zero_judge_max_tokens_is_refused_not_replaced_by_the_default(tmp_path, capsys):
    answers = tmp_path / "ours.jsonl"
    answers.write_text(json.dumps({"question_id": 1, "model_id": "ours", "answers": ["a", "b"]}) + "\n")
    argv = ["mt-bench", "--answers", answers, "--judge_base_url", "http://127.0.0.1:9/v1", "--judge_model", "j"]
    assert cli(*argv, "--judge_max_tokens", "0") == 1
    assert "--judge_max_tokens" in capsys.readouterr().err
