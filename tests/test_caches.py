"""Caches that never go stale: every resumable file is keyed on what changes its content, written in whole lines, and
repaired when its last line was cut short; judges' garbled replies are asked again; secrets stay with their host.

One test (or more) per defect found from outside; each fails without its fix."""

import argparse
import importlib
import json
import sys
from pathlib import Path

import pytest
from conftest import cpu_config
from stub_completions import StubCompletions

from trl_rankalign.cli.eval import add_eval_parser
from trl_rankalign.cli.rank import add_rank_parser
from trl_rankalign.evaluation.win_rate import llm_judge_win_rate
from trl_rankalign.sampling import generation
from trl_rankalign.sampling.jsonl import append_jsonl, read_jsonl, repair_jsonl
from trl_rankalign.sampling.llm_judge import JudgeClient, JudgeRequestError
from trl_rankalign.sampling.rank import DEFAULT_ASPECTS, rank_candidates
from trl_rankalign.sampling.server import GenerationServerError, ServerBackend
from trl_rankalign.tiny.language import reward_fn, true_reward


PROMPTS = ["Review of the pasta:", "Review of the hotel:", "Review of the museum:", "Your thoughts on the salad:"]
GOOD, BAD = " The pasta was great and fresh.", " The pasta was awful and cold."


def cli(*argv):
    parser = argparse.ArgumentParser(prog="trl-rankalign")
    commands = parser.add_subparsers(dest="command", required=True)
    add_eval_parser(commands)
    add_rank_parser(commands)
    return parser.parse_args([str(a) for a in argv]).func(parser.parse_args([str(a) for a in argv]))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def cut_last_line(path: Path) -> None:
    """Simulate a write interrupted mid-line: the last line loses its second half and its newline."""
    text = path.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[-1]
    path.write_text(text[: len(text) - len(last) - 1] + last[: len(last) // 2])


def lines(path: Path) -> list[dict]:
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]  # every line parses


@pytest.fixture
def generated(monkeypatch):
    """The prompts that go through generation (wraps `generation.generate_completions`)."""
    calls = []
    original = generation.generate_completions

    def counting(model, tokenizer, prompts, *args, **kwargs):
        calls.append(len(prompts))
        return original(model, tokenizer, prompts, *args, **kwargs)

    monkeypatch.setattr(generation, "generate_completions", counting)
    return calls


@pytest.fixture
def prompts_file(tmp_path):
    return write_jsonl(
        tmp_path / "prompts.jsonl", [{"prompt": p, "reference": "The pasta was great."} for p in PROMPTS]
    )


# ------------------------------------------------------------------------------------------- JSONL primitives
def test_a_damaged_line_is_skipped_not_the_rows_after_it_and_repair_makes_appends_whole(tmp_path):
    path = tmp_path / "cache.jsonl"
    write_jsonl(path, [{"index": 0}])
    with open(path, "a") as f:  # what the old code produced: a partial line, then the rerun's append glued onto it
        f.write('{"index": 1, "pro' + '{"index": 1, "prompt": "x"}\n{"index": 2}\n{"index": 3')
    assert [row["index"] for row in read_jsonl(path)] == [0, 2]  # the reader does not stop at the damaged line
    assert [row["index"] for row in repair_jsonl(path)] == [0, 2]
    append_jsonl(path, [{"index": 1}, {"index": 3}])
    assert [row["index"] for row in lines(path)] == [0, 2, 1, 3]
    (tmp_path / "complete.jsonl").write_text('{"index": 0}')  # complete but without its newline: kept, newline added
    assert repair_jsonl(tmp_path / "complete.jsonl") == [{"index": 0}]
    assert (tmp_path / "complete.jsonl").read_text() == '{"index": 0}\n'


# ------------------------------------------------------------------------------------------- eval generate
def test_eval_generate_regenerates_answers_made_with_other_settings(tiny_path, tmp_path, prompts_file, generated):
    """Greedy vs sampled, --max_new_tokens, another --model under the same --name: the answers are made again."""
    from trl_rankalign.tiny import tiny_model_path

    out = tmp_path / "answers"
    base = ["eval", "generate", "--name", "policy", "--prompts", prompts_file, "--output_dir", out, "--batch_size", 2]
    answers = out / "policy.jsonl"
    assert cli(*base, "--model", tiny_path, "--max_new_tokens", 8) == 0
    first = answers.read_bytes()
    generated.clear()
    assert cli(*base, "--model", tiny_path, "--max_new_tokens", 8) == 0  # same settings: nothing generated
    assert generated == [] and answers.read_bytes() == first

    assert cli(*base, "--model", tiny_path, "--max_new_tokens", 8, "--do_sample", "--seed", 3) == 0
    rows = lines(answers)
    assert generated == [2, 2] and answers.read_bytes() != first and len(rows) == 4
    assert {row["generation"]["temperature"] for row in rows} == {1.0}

    assert cli(*base, "--model", tiny_path, "--max_new_tokens", 4) == 0
    rows = lines(answers)
    assert {(row["generation"]["max_new_tokens"], row["generation"]["temperature"]) for row in rows} == {(4, 0.0)}

    other = tiny_model_path(arch="llama", cache_dir=tmp_path / "tiny_llama")
    assert cli(*base, "--model", other, "--max_new_tokens", 4) == 0
    llama_rows = lines(answers)
    assert len(llama_rows) == 4 and {r["generation"]["model"] for r in llama_rows} != {
        r["generation"]["model"] for r in rows
    }


def test_answers_name_cannot_escape_the_output_dir(tiny_path, tmp_path, prompts_file, capsys):
    out = tmp_path / "a" / "b"
    for name in ("../../x", "..", ".hidden", "sub/x"):
        assert cli("eval", "generate", "--model", tiny_path, "--name", name, "--prompts", prompts_file,
                   "--output_dir", out, "--max_new_tokens", 2) == 1  # fmt: skip
        assert "plain file name" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists() and not out.exists()


def test_truncated_answers_line_is_redone_and_text_metrics_refuses_partial_answers(
    tiny_path, tmp_path, prompts_file, generated, capsys
):
    out = tmp_path / "answers"
    argv = ["eval", "generate", "--model", tiny_path, "--name", "m", "--prompts", prompts_file, "--output_dir", out,
            "--max_new_tokens", 6, "--batch_size", 2]  # fmt: skip
    assert cli(*argv) == 0
    answers = out / "m.jsonl"
    full = lines(answers)
    cut_last_line(answers)
    generated.clear()
    assert cli(*argv) == 0 and generated == [2]  # only the batch of the damaged row
    assert sorted(lines(answers), key=lambda r: r["index"]) == sorted(full, key=lambda r: r["index"])
    generated.clear()
    assert cli(*argv) == 0 and generated == []  # and then nothing: later reruns do not redo later work
    # a partial answers file (a damaged line, or an unfinished run) is not scored as if it were the test set
    cut_last_line(answers)
    assert cli("eval", "text-metrics", "--answers", answers, "--prompts", prompts_file) == 1
    assert "answers 3 of the 4 prompts" in capsys.readouterr().err
    assert cli("eval", "text-metrics", "--answers", answers, "--prompts", prompts_file, "--limit", 3,
               "--metrics", "chrf") == 0  # fmt: skip


# ------------------------------------------------------------------------------------------- rank
def _reward_module(folder: Path, name: str, body: str):
    (folder / f"{name}.py").write_text(f"def reward_fn(prompts, completions):\n    return {body}\n")
    importlib.invalidate_caches()
    if name in sys.modules:
        return importlib.reload(sys.modules[name])
    return importlib.import_module(name)


CANDIDATES = [[GOOD, BAD, " It was okay."], [" The hotel was clean.", " The hotel was dirty and noisy."]]


def test_rank_scores_are_keyed_on_the_reward_code_not_its_name(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    lengths = _reward_module(tmp_path, "rewards_by_length", "[float(len(c)) for c in completions]")
    negated = _reward_module(tmp_path, "rewards_negated", "[-float(len(c)) for c in completions]")
    assert lengths.reward_fn.__name__ == negated.reward_fn.__name__ == "reward_fn"
    out = tmp_path / "ranked"
    data = rank_candidates(PROMPTS[:2], CANDIDATES, reward=lengths.reward_fn, output_dir=out)
    assert data[0]["scores"] == [float(len(c)) for c in CANDIDATES[0]]
    data = rank_candidates(PROMPTS[:2], CANDIDATES, reward=negated.reward_fn, output_dir=out)  # another module
    assert data[0]["scores"] == [-float(len(c)) for c in CANDIDATES[0]]
    edited = _reward_module(tmp_path, "rewards_negated", "[-2.0 * len(c) for c in completions]  # edited")
    data = rank_candidates(PROMPTS[:2], CANDIDATES, reward=edited.reward_fn, output_dir=out)  # edited in place
    assert data[0]["scores"] == [-2.0 * len(c) for c in CANDIDATES[0]]


def test_rank_regenerates_candidates_made_with_other_settings(tiny_path, tmp_path, prompts_file, generated):
    out = tmp_path / "ranked"
    base = ["rank", "--input", prompts_file, "--policy", tiny_path, "--output_dir", out, "--reward_fn",
            "trl_rankalign.tiny.language:reward_fn", "--batch_size", 4]  # fmt: skip
    candidates = out / "candidates"

    def generation_of():
        (path,) = candidates.iterdir()
        rows = lines(path)
        assert len(rows) == 4
        return rows[0]["generation"], [len(row["completions"]) for row in rows]

    assert cli(*base, "--num_samples", 2, "--max_new_tokens", 6) == 0
    assert generation_of()[1] == [2] * 4
    generated.clear()
    assert cli(*base, "--num_samples", 2, "--max_new_tokens", 6) == 0 and generated == []  # unchanged: reused
    assert cli(*base, "--num_samples", 3, "--max_new_tokens", 6) == 0
    assert generation_of()[1] == [3] * 4 and generated == [4]
    assert cli(*base, "--num_samples", 3, "--max_new_tokens", 6, "--temperature", 0.5) == 0
    assert generation_of()[0]["temperature"] == 0.5 and generated == [4, 4]
    assert cli(*base, "--num_samples", 3, "--max_new_tokens", 4, "--temperature", 0.5) == 0
    assert generation_of()[0]["max_new_tokens"] == 4 and generated == [4, 4, 4]
    verdicts = {r["index"]: r for r in lines(out / "verdicts.jsonl")}
    assert all(len(verdicts[i]["completions"]) <= 3 for i in range(4))  # scored on the new candidates


def rating_judge(request):
    text = request["messages"][-1]["content"]
    answer = text.split("[The Start of the Response]")[1].split("[The End of the Response]")[0].strip()
    ratings = {aspect: 4 for aspect in DEFAULT_ASPECTS} | {"helpfulness": min(5, max(1, 3 + true_reward(answer)))}
    return 200, json.dumps(ratings)


def test_rank_stops_instead_of_discarding_paid_verdicts(tiny_path, tmp_path, prompts_file, judge_server, capsys):
    judge_server.reply = rating_judge
    out = tmp_path / "ranked"
    base = ["rank", "--input", prompts_file, "--policy", tiny_path, "--output_dir", out, "--num_samples", 2,
            "--judge_base_url", judge_server.base_url, "--judge_model", "stub", "--judge_max_retries", 0]  # fmt: skip
    assert cli(*base, "--max_new_tokens", 6) == 0
    paid = len(judge_server.requests)
    (candidates,) = (out / "candidates").iterdir()
    before = candidates.read_bytes()
    assert cli(*base, "--max_new_tokens", 4) == 1
    error = capsys.readouterr().err
    assert "max_new_tokens: 6 -> 4" in error and "verdicts.jsonl" in error and "--output_dir" in error
    assert len(judge_server.requests) == paid and candidates.read_bytes() == before  # nothing re-asked or redone
    assert cli(*base, "--max_new_tokens", 6, "--judge_model", "another-judge") == 1  # another judge: stop too
    assert "judge.model: 'stub' -> 'another-judge'" in capsys.readouterr().err
    assert len(judge_server.requests) == paid


def test_rank_truncated_verdict_and_garbled_verdicts_are_asked_again(tmp_path, judge_server):
    healthy = rating_judge
    judge_server.reply = lambda r: (
        (200, "I cannot rate this.") if "museum" in r["messages"][-1]["content"] else healthy(r)
    )
    client = JudgeClient(judge_server.base_url, "stub", api_key_env=None, max_retries=0)
    candidates = [[GOOD, BAD]] * 4
    rank_candidates(PROMPTS, candidates, judge=client, output_dir=tmp_path, max_workers=1)
    assert len(judge_server.requests) == 8
    verdicts = tmp_path / "verdicts.jsonl"
    cut_last_line(verdicts)
    judge_server.requests.clear()
    judge_server.reply = healthy  # the judge is healthy now
    data = rank_candidates(PROMPTS, candidates, judge=client, output_dir=tmp_path, max_workers=1)
    damaged = {"museum"} | {
        p.split()[-1].rstrip(":") for p in PROMPTS if p not in {r["prompt"] for r in lines(verdicts)[:3]}
    }
    asked = {r["messages"][-1]["content"] for r in judge_server.requests}
    assert len(judge_server.requests) in (2, 4) and all(any(w in a for w in damaged) for a in asked)
    assert len(data) == 4 and json.loads((tmp_path / "summary.json").read_text())["parse_errors"] == 0
    judge_server.requests.clear()
    rank_candidates(PROMPTS, candidates, judge=client, output_dir=tmp_path, max_workers=1)
    assert judge_server.requests == []  # everything parsed and saved: nothing asked, nothing re-paid


# ------------------------------------------------------------------------------------------- win rate
def test_win_rate_judgments_truncated_or_garbled_are_asked_again(tmp_path, judge_server):
    def judge(request):
        text = request["messages"][-1]["content"]
        if "museum" in text and judge_server.garble:
            return 200, "Both are fine."
        a = text.split("[The Start of Assistant A's Answer]")[1].split("[The End of Assistant A's Answer]")[0]
        return 200, "[[A]]" if "great" in a else "[[B]]"

    judge_server.garble = True
    judge_server.reply = judge
    model = write_jsonl(tmp_path / "model.jsonl", [{"index": i, "prompt": p, "completions": [GOOD]}
                                                   for i, p in enumerate(PROMPTS)])  # fmt: skip
    baseline = write_jsonl(tmp_path / "base.jsonl", [{"index": i, "prompt": p, "completions": [BAD]}
                                                     for i, p in enumerate(PROMPTS)])  # fmt: skip
    cache = tmp_path / "judgments.jsonl"
    client = JudgeClient(judge_server.base_url, "stub", api_key_env=None, max_retries=0)
    first = llm_judge_win_rate(model, baseline, client, cache_file=cache, max_workers=1)
    assert (first.wins, first.errors, len(judge_server.requests)) == (3, 1, 8)
    judge_server.garble = False  # healthy now: only the garbled prompt is asked again (both orders)
    judge_server.requests.clear()
    second = llm_judge_win_rate(model, baseline, client, cache_file=cache, max_workers=1)
    assert (second.wins, second.errors, len(judge_server.requests)) == (4, 0, 2)
    assert all("museum" in r["messages"][-1]["content"] for r in judge_server.requests)
    cut_last_line(cache)  # an interrupted append
    judge_server.requests.clear()
    third = llm_judge_win_rate(model, baseline, client, cache_file=cache, max_workers=1)
    assert (third.wins, len(judge_server.requests)) == (4, 2) and len(lines(cache)) >= 4
    judge_server.requests.clear()
    assert llm_judge_win_rate(model, baseline, client, cache_file=cache).wins == 4 and judge_server.requests == []
    # another judge model does not silently reuse (or overwrite) paid judgments
    with pytest.raises(ValueError, match="another judge setup.*judge.model: 'stub' -> 'other'"):
        llm_judge_win_rate(model, baseline, JudgeClient(judge_server.base_url, "other", api_key_env=None),
                           cache_file=cache)  # fmt: skip


# ------------------------------------------------------------------------------------------- secrets
def test_the_key_never_follows_a_redirect_to_another_host(judge_server, monkeypatch):
    from stub_judge import StubJudge

    monkeypatch.setenv("CACHE_TEST_KEY", "sk-redirect-secret")
    other = StubJudge()  # another host (port); records any request, a redirected POST arriving as a GET too
    try:
        judge_server.reply = lambda r: (302, {}, 0.0, {"Location": other.base_url + "/chat/completions?token=abc"})
        client = JudgeClient(judge_server.base_url, "stub", api_key_env="CACHE_TEST_KEY", max_retries=0)
        with pytest.raises(JudgeRequestError) as error:
            client.chat([{"role": "user", "content": "hi"}])
        assert all("sk-redirect-secret" not in str(r.get("auth")) for r in other.requests)  # the key stayed home
        assert other.requests == []  # not even the request went there
        assert "redirected" in str(error.value) and other.base_url + "/chat/completions" in str(error.value)
        assert "token=abc" not in str(error.value)
        assert judge_server.requests[0]["auth"] == "Bearer sk-redirect-secret"  # the configured host did get it
    finally:
        other.close()


def test_error_messages_never_echo_the_key(judge_server, monkeypatch, tmp_path):
    monkeypatch.setenv("CACHE_TEST_KEY", "sk-echo-secret")
    judge_server.reply = lambda r: (401, {"error": "invalid key sk-echo-secret", "header": "Bearer sk-echo-secret"})
    client = JudgeClient(judge_server.base_url, "stub", api_key_env="CACHE_TEST_KEY", max_retries=0)
    with pytest.raises(JudgeRequestError, match="HTTP 401") as error:
        client.chat([{"role": "user", "content": "hi"}])
    assert "sk-echo-secret" not in str(error.value) and "***" in str(error.value)
    for factory in (
        lambda url: JudgeClient(url, "m"),
        lambda url: ServerBackend(base_url=url, served_model="m"),
    ):
        with pytest.raises(ValueError, match="carries credentials") as error:
            factory("https://user:sk-url-secret@api.example.com/v1")
        assert "sk-url-secret" not in str(error.value) and "user:sk" not in str(error.value)
    server = StubCompletions()
    try:
        server.reply = lambda r: (403, {"detail": "sk-echo-secret is not allowed"})
        backend = ServerBackend(base_url=server.base_url, served_model="m", api_key_env="CACHE_TEST_KEY",
                                max_retries=0)  # fmt: skip
        with pytest.raises(GenerationServerError) as error:
            generation.sample_completions(None, _tokenizer(), ["hi"], 2, backend, progress=False)
        assert "sk-echo-secret" not in str(error.value)
    finally:
        server.close()


def _tokenizer():
    from transformers import AutoTokenizer

    from trl_rankalign.tiny import tiny_model_path

    return AutoTokenizer.from_pretrained(tiny_model_path())


# ------------------------------------------------------------------------------------------- RSO and RAFT
def test_rso_rescores_for_another_reward_and_resamples_a_checkpoint_changed_in_place(
    tiny_path, tmp_path, monkeypatch, generated
):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_rankalign.rso_config import RSOConfig
    from trl_rankalign.rso_sampler import sample_rso_dataset

    monkeypatch.syspath_prepend(str(tmp_path))
    other = _reward_module(tmp_path, "rso_other_reward", "[-float(len(c)) for c in completions]")
    prompts = Dataset.from_dict({"prompt": PROMPTS})
    args = cpu_config(RSOConfig, tmp_path / "rso", num_candidates=4, num_accepted=2, max_new_tokens=6,
                      sampling_batch_size=2, drop_tied_pairs=False)  # fmt: skip
    first = sample_rso_dataset(tiny_path, args, prompts, reward_fn)
    assert generated == [2, 2]
    second = sample_rso_dataset(tiny_path, args, prompts, other.reward_fn)  # same __name__, another reward
    assert generated == [2, 2]  # rescored, not regenerated
    assert second["samples"]["completions"] == first["samples"]["completions"]
    assert second["samples"]["scores"] == [[-float(len(c)) for c in row] for row in first["samples"]["completions"]]
    # a checkpoint overwritten in place (same path) is another policy: its candidates are sampled anew
    checkpoint = tmp_path / "policy"
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    model.save_pretrained(checkpoint)
    AutoTokenizer.from_pretrained(tiny_path).save_pretrained(checkpoint)
    args = cpu_config(RSOConfig, tmp_path / "rso2", num_candidates=4, num_accepted=2, max_new_tokens=6,
                      sampling_batch_size=2, drop_tied_pairs=False)  # fmt: skip
    sample_rso_dataset(str(checkpoint), args, prompts, reward_fn)
    generated.clear()
    sample_rso_dataset(str(checkpoint), args, prompts, reward_fn)
    assert generated == []
    for param in model.parameters():
        param.data.mul_(1.5)
    model.save_pretrained(checkpoint)
    sample_rso_dataset(str(checkpoint), args, prompts, reward_fn)
    assert generated == [2, 2]


def test_raft_redoes_rounds_and_samples_made_with_other_settings(tiny_path, tmp_path, generated):
    from trl_rankalign.raft import RAFTConfig, train_raft

    def config(**overrides):
        kwargs = {**dict(num_samples=2, max_new_tokens=6, max_steps=1, sampling_batch_size=2), **overrides}
        return cpu_config(RAFTConfig, tmp_path, **kwargs)

    train_raft(tiny_path, PROMPTS, config(), reward=reward_fn)
    assert generated == [2, 2]
    generated.clear()
    train_raft(tiny_path, PROMPTS, config(), reward=reward_fn)
    assert generated == []  # finished with these settings: loaded
    train_raft(tiny_path, PROMPTS, config(num_samples=3), reward=reward_fn)
    assert generated == [2, 2]
    assert {len(row["completions"]) for row in lines(tmp_path / "round_0" / "samples.jsonl")} == {3}
    generated.clear()
    train_raft(tiny_path, PROMPTS, config(num_samples=3, learning_rate=1e-4), reward=reward_fn)
    assert generated == []  # the round is trained again; its samples are still valid
    cut_last_line(tmp_path / "round_0" / "samples.jsonl")
    (tmp_path / "round_0" / "model" / ".done").unlink()
    train_raft(tiny_path, PROMPTS, config(num_samples=3, learning_rate=1e-4), reward=reward_fn)
    assert generated == [2] and len(lines(tmp_path / "round_0" / "samples.jsonl")) == 4
