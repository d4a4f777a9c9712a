"""MT-Bench's protocol: later turns answered in the model's own conversation; resumable per question and turn."""

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_rankalign.sampling import multi_turn
from trl_rankalign.sampling.multi_turn import generate_multi_turn_answers, load_multi_turn_answers, load_questions


QUESTIONS = Path(__file__).resolve().parent / "fixtures" / "mt_bench_questions.jsonl"


@pytest.fixture(scope="module")
def policy(tiny_path):
    return AutoModelForCausalLM.from_pretrained(tiny_path), AutoTokenizer.from_pretrained(tiny_path)


def test_later_turns_see_the_models_own_answers_and_resume(policy, tmp_path, monkeypatch):
    model, tokenizer = policy
    questions = load_questions(QUESTIONS)
    calls = []
    real = multi_turn.sample_completions
    monkeypatch.setattr(
        multi_turn,
        "sample_completions",
        lambda m, t, prompts, *a, **k: calls.append((prompts, k)) or real(m, t, prompts, *a, **k),
    )
    output = tmp_path / "answers.jsonl"
    rows = generate_multi_turn_answers(model, tokenizer, questions, output, max_new_tokens=6, seed=0)
    assert [len(r["answers"]) for r in rows] == [2, 2]
    turn_two = [prompt for prompts, _ in calls for prompt in prompts if len(prompt) == 3]
    assert [m["role"] for m in turn_two[0]] == ["user", "assistant", "user"]
    own = {r["question_id"]: r["answers"][0] for r in rows}
    assert {p[1]["content"] for p in turn_two} == set(own.values())  # each model's own first answer
    assert {k["temperature"] for _, k in calls} == {0.7, 0.0}  # MT-Bench's per-category temperatures

    calls.clear()  # a rerun asks nothing
    again = generate_multi_turn_answers(model, tokenizer, questions, output, max_new_tokens=6, seed=0)
    assert calls == [] and again == rows
    assert load_multi_turn_answers(output, questions)[0]["answers"] == rows[0]["answers"]

    lines = output.read_text().splitlines()  # a damaged last line (an interrupted write) is redone, nothing else
    output.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:10])
    calls.clear()
    generate_multi_turn_answers(model, tokenizer, questions, output, max_new_tokens=6, seed=0)
    assert sum(len(prompts) for prompts, _ in calls) == 1
    assert all(json.loads(line) for line in output.read_text().splitlines())

    calls.clear()  # other decoding: every turn is redone
    generate_multi_turn_answers(model, tokenizer, questions, output, max_new_tokens=4, seed=0)
    assert sum(len(prompts) for prompts, _ in calls) == 4


def test_bad_questions_name_the_row_and_field(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text(json.dumps({"question_id": 1, "turns": ["hi", {"role": "assistant", "content": "x"}]}) + "\n")
    with pytest.raises(ValueError, match=r"question row 0, field 'turns\[1\].role': expected a user turn"):
        load_questions(bad)
    bad.write_text(json.dumps({"question_id": 1, "turns": []}) + "\n")
    with pytest.raises(ValueError, match="question row 0, field 'turns'"):
        load_questions(bad)
    bad.write_text(json.dumps({"turns": ["a"]}) + "\n")
    with pytest.raises(ValueError, match="question row 0, field 'question_id': missing"):
        load_questions(bad)


def test_exports_keep_every_turn_and_arena_hard_layout(tmp_path):
    from trl_rankalign.evaluation.export import to_arena_hard, to_mt_bench

    rows = [{"question_id": 81, "category": "writing", "turns": ["a", "b"], "answers": ["A1", "A2"]}]
    path = to_mt_bench(rows, "tiny-rankdpo", tmp_path / "mt_bench")
    (line,) = [json.loads(x) for x in Path(path).read_text().splitlines()]
    assert line["question_id"] == 81 and line["choices"] == [{"index": 0, "turns": ["A1", "A2"]}]
    assert line["model_id"] == "tiny-rankdpo" and path.endswith("model_answer/tiny-rankdpo.jsonl")

    answers = [{"index": 0, "prompt": "Write a haiku.", "completions": ["Soup steams in the bowl"]}]
    path = to_arena_hard(answers, "tiny", tmp_path / "arena", uids=["abc123"])
    (line,) = [json.loads(x) for x in Path(path).read_text().splitlines()]
    assert line["uid"] == "abc123" and line["model"] == "tiny"
    assert line["messages"] == [
        {"role": "user", "content": "Write a haiku."},
        {"role": "assistant", "content": {"answer": "Soup steams in the bowl"}},
    ]
    assert line["metadata"]["token_len"] == 5  # whitespace words without a tokenizer


def test_mt_bench_judging_per_turn_cached_and_errors_retried(judge_server, tmp_path):
    from trl_rankalign.evaluation.mt_bench import judge_pairwise, judge_single
    from trl_rankalign.sampling.llm_judge import JudgeClient

    ours = [{"question_id": 1, "turns": ["q1", "q2"], "answers": ["good answer", "good again"]}]
    theirs = [{"question_id": 1, "turns": ["q1", "q2"], "answers": ["bad answer", "bad again"]}]
    broken = {"on": True}

    def judge(request):
        text = request["messages"][-1]["content"]
        if "Assistant A" in text:  # pairwise: prefers the side whose last answer is good
            last_a = text.split("### Assistant B")[0].rsplit("### Assistant A:", 1)[1]
            return 200, "[[A]]" if "good" in last_a else "[[B]]"
        if broken["on"] and "q2" in text:
            return 200, "I cannot rate this."
        return 200, "Rating: [[8]]" if text.rstrip().endswith(("good answer", "good again")) else "Rating: [[3]]"

    judge_server.reply = judge
    client = JudgeClient(judge_server.base_url, "stub-judge", timeout=5.0, max_retries=1, backoff=0.01)
    cache = tmp_path / "single.jsonl"
    first = judge_single(ours, client, cache)
    assert (first.per_turn, first.errors) == ({1: 8.0}, 1)  # turn 2's reply had no rating: an error, not a score
    asked = len(judge_server.requests)
    broken["on"] = False
    second = judge_single(ours, client, cache)  # only the failed judgment is asked again
    assert len(judge_server.requests) == asked + 1 and second.per_turn == {1: 8.0, 2: 8.0} and second.errors == 0
    # turn 2 is judged with the whole conversation: the first question and answer are in the request
    assert "q1" in judge_server.requests[-1]["messages"][-1]["content"]

    pairwise = judge_pairwise(ours, theirs, client, tmp_path / "pairwise.jsonl")
    assert pairwise.per_turn == {1: 1.0, 2: 1.0} and pairwise.judged == 2
    asked = len(judge_server.requests)
    judge_pairwise(ours, theirs, client, tmp_path / "pairwise.jsonl")
    assert len(judge_server.requests) == asked  # cached, both orders


# ------------------------------------------------------------------------------------------- the cache key (issue 24)
@pytest.fixture
def completions_server():
    from stub_completions import StubCompletions

    server = StubCompletions()
    yield server
    server.close()


def _served(server, **transport):
    return dict(backend="server", base_url=server.base_url, served_model="m", model_identity="m", max_new_tokens=8,
                prompt_format="text", seed=0, **transport)  # fmt: skip


def test_the_cache_keys_the_question_text_not_the_transport(policy, tmp_path, completions_server):
    _, tokenizer = policy
    questions = load_questions(QUESTIONS)
    output = tmp_path / "answers.jsonl"
    first = generate_multi_turn_answers(None, tokenizer, questions, output, **_served(completions_server))
    assert len(completions_server.requests) == 4
    completions_server.requests.clear()  # other transport settings: the same answers, nothing paid again
    transport = dict(concurrency=1, timeout=5.0, max_retries=0, requests_per_second=1000.0)
    again = generate_multi_turn_answers(None, tokenizer, questions, output, **_served(completions_server, **transport))
    assert again == first and completions_server.requests == []

    edited = [dict(q) for q in questions]  # the same question_id, a new second turn: only that turn is asked
    edited[0]["turns"] = [questions[0]["turns"][0], "Now as a limerick."]
    rows = generate_multi_turn_answers(None, tokenizer, edited, output, **_served(completions_server))
    assert len(completions_server.requests) == 1 and "limerick" in completions_server.requests[0]["prompt"]
    assert rows[1] == first[1] and rows[0]["answers"][0] == first[0]["answers"][0]
    completions_server.requests.clear()  # a new first turn: both turns of that question are redone
    edited[1]["turns"] = ["What is 5 + 5?", questions[1]["turns"][1]]
    generate_multi_turn_answers(None, tokenizer, edited, output, **_served(completions_server))
    assert len(completions_server.requests) == 2


def test_a_negative_limit_is_refused_not_a_dropped_last_question():
    with pytest.raises(ValueError, match="limit must be a positive number.*-1"):
        load_questions(QUESTIONS, limit=-1)
    assert len(load_questions(QUESTIONS, limit=1)) == 1


def _eval_cli(*argv) -> int:
    import argparse

    from trl_rankalign.cli.eval import add_eval_parser

    parser = argparse.ArgumentParser(prog="trl-rankalign")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


@pytest.mark.parametrize("names", [[], ["one"]])
def test_multi_turn_generate_refuses_names_that_collide_like_single_turn(
    tiny_path, tmp_path, completions_server, capsys, names
):
    import shutil

    models = [tmp_path / "a" / "tiny", tmp_path / "b" / "tiny"]  # two checkpoints, one folder name
    for model in models:
        shutil.copytree(tiny_path, model)
    argv = ["eval", "generate", "--multi_turn", "--prompts", QUESTIONS, "--output_dir", tmp_path / "answers",
            "--generation_backend", "server", "--generation_base_url", completions_server.base_url,
            "--generation_model", "m", "--max_new_tokens", 4]  # fmt: skip
    for model in models:
        argv += ["--model", model]
    for name in names:
        argv += ["--name", name]
    assert _eval_cli(*argv) == 1 and "name" in capsys.readouterr().err
    assert completions_server.requests == []  # refused before anything is asked


def test_the_cache_keys_the_prompt_format_and_route(policy, tmp_path, completions_server):
    """Token ids or text, the completions or the chat route: the server answers other completions, so nothing cached
    under one is reused under another."""
    _, tokenizer = policy
    questions = load_questions(QUESTIONS)[:1]
    output = tmp_path / "answers.jsonl"
    generate_multi_turn_answers(None, tokenizer, questions, output, **_served(completions_server))
    asked = len(completions_server.requests)
    generate_multi_turn_answers(None, tokenizer, questions, output, **{**_served(completions_server),
                                                                       "prompt_format": "tokens"})  # fmt: skip
    assert len(completions_server.requests) == 2 * asked


def test_do_sample_leaves_the_greedy_categories_greedy(policy, tmp_path, monkeypatch):
    """MT-Bench's temperature table answers math at temperature 0: `do_sample=True` (for the other categories) must not
    turn that into an error halfway through the file."""
    import trl_rankalign.sampling.multi_turn as multi_turn

    model, tokenizer = policy
    seen = []
    real = multi_turn.sample_completions

    def recording(*args, **kwargs):
        seen.append((kwargs["temperature"], kwargs.get("do_sample")))
        return real(*args, **kwargs)

    monkeypatch.setattr(multi_turn, "sample_completions", recording)
    questions = [{"question_id": 1, "category": "math", "turns": ["What is 2 + 2?"]},
                 {"question_id": 2, "category": "writing", "turns": ["Write a line."]}]  # fmt: skip
    rows = generate_multi_turn_answers(model, tokenizer, questions, tmp_path / "a.jsonl", max_new_tokens=4,
                                       do_sample=True, temperature_by_category={"math": 0.0}, temperature=0.7)  # fmt: skip
    assert len(rows) == 2 and sorted(seen) == [(0.0, None), (0.7, True)]
