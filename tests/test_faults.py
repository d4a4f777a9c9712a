"""Fault injection: one stub server (tests/stub_server.py), its faults scripted per request, against every caller of
the shared HTTP client: the `server` generation backend, `rank`'s judge, `eval mt-bench`'s judge and `eval win-rate`.

Each transient fault (5xx, 429 with Retry-After, malformed JSON, a reply slower than the timeout, a trickled body, a
connection cut mid-body, a garbage status line) is answered once, then the server is healthy: every caller must succeed
with exactly one more request. The rest must end in a clear error or an error count, never a raw traceback, a leaked
key or a truncated reply scored as a rating. Kill-and-resume runs check that a resumed run equals an uninterrupted one
and that nothing answered before the kill is asked again. docs/reliability.md is the table of these cases.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from stub_completions import default_reply
from stub_server import Fault, StubServer, script
from transformers import AutoTokenizer

from trl_rankalign.cli.rank import add_rank_parser
from trl_rankalign.evaluation.mt_bench import judge_single
from trl_rankalign.evaluation.win_rate import llm_judge_win_rate
from trl_rankalign.sampling.generation import sample_completions
from trl_rankalign.sampling.http import EndpointError
from trl_rankalign.sampling.jsonl import read_jsonl
from trl_rankalign.sampling.llm_judge import JudgeClient
from trl_rankalign.sampling.rank import rank_candidates
from trl_rankalign.sampling.server import ServerBackend


KEY_ENV = "FAULTS_TEST_KEY"
KEY = "sk-Q7vX2mR9pL4tZ8wK1nB6cJ3hF5dS0aY"  # 34 characters, as in the report
GOOD, BAD = " The pasta was great and fresh.", " The pasta was awful and cold."
PROMPTS = ["Review of the pasta:", "Review of the hotel:", "Review of the museum:", "Your thoughts on the salad:"]
# One reply every parser accepts: rank's aspect ratings (the last JSON object), MT-Bench's [[rating]] and win-rate's
# [[A]] verdict; a truncated restatement says 3 instead, so a score of 3 means a truncated reply was scored.
HEALTHY = '{"helpfulness": 4, "honesty": 4, "instruction_following": 4, "truthfulness": 4} Rating: [[4]] [[A]]'
CUT = 'For example: {"helpfulness": 3, "honesty": 3, "instruction_following": 3, "truthfulness": 3} [[3]] [[A]]'


def chat(text: str, finish_reason: str = "stop") -> dict:
    return {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}]
    }


def healthy(request: dict):
    """A judge reply for chat requests, deterministic completions for completion requests."""
    return (200, chat(HEALTHY)) if "messages" in request else default_reply(request)


def body(request: dict) -> bytes:
    return json.dumps(healthy(request)[1]).encode()


def cli(*argv) -> int:
    """`trl-rankalign rank ...` in this process: its exit code (stderr captured by capsys)."""
    parser = argparse.ArgumentParser(prog="trl-rankalign")
    add_rank_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def leaked(text: str) -> bool:
    """Whether `text` holds the key or any prefix of it longer than its `sk-` and one character."""
    return any(KEY[:n] in text for n in range(5, len(KEY) + 1))


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    stub = StubServer(healthy)
    yield stub
    stub.close()


@pytest.fixture(scope="module")
def tokenizer(tiny_path):
    return AutoTokenizer.from_pretrained(tiny_path)


def client(url: str, timeout: float = 1.0, retries: int = 2) -> JudgeClient:
    return JudgeClient(url, "judge", api_key_env=KEY_ENV, timeout=timeout, max_retries=retries, backoff=0.01)


# ------------------------------------------------------------------------------------------- the four callers
# Each runs one small job against `url` and returns (value, errors): what it produced and its count of unparseable
# replies. `requests` is how many requests a healthy run makes.
def run_server(url, tmp_path, tokenizer, timeout=1.0, retries=2):
    backend = ServerBackend(base_url=url, served_model="m", api_key_env=KEY_ENV, max_retries=retries,
                            timeout=timeout, backoff=0.01, prompt_format="text")  # fmt: skip
    completions = sample_completions(None, tokenizer, [PROMPTS[0]], 2, backend, progress=False, max_new_tokens=8)
    return completions, 0


def run_rank(url, tmp_path, tokenizer, timeout=1.0, retries=2):
    rank_candidates([PROMPTS[0]], [[GOOD, BAD]], judge=client(url, timeout, retries), output_dir=tmp_path / "rank",
                    max_workers=1)  # fmt: skip
    summary = json.loads((tmp_path / "rank" / "summary.json").read_text())
    record = read_jsonl(tmp_path / "rank" / "verdicts.jsonl")[-1]
    return record["scores"], summary["parse_errors"]


def run_mt_bench(url, tmp_path, tokenizer, timeout=1.0, retries=2):
    rows = [{"question_id": 81, "category": "writing", "turns": ["Write a haiku."], "answers": ["Soup steams."]}]
    result = judge_single(rows, client(url, timeout, retries), tmp_path / "mt_bench.jsonl")
    return result.per_turn, result.errors


def run_win_rate(url, tmp_path, tokenizer, timeout=1.0, retries=2):
    model = [{"index": 0, "prompt": PROMPTS[0], "completions": [GOOD]}]
    base = [{"index": 0, "prompt": PROMPTS[0], "completions": [BAD]}]
    result = llm_judge_win_rate(model, base, client(url, timeout, retries), cache_file=tmp_path / "wr.jsonl")
    return result.per_prompt[0]["verdicts"], result.errors


CALLERS = {
    "server": (run_server, 1),
    "rank": (run_rank, 2),
    "mt_bench": (run_mt_bench, 1),
    "win_rate": (run_win_rate, 2),
}
JUDGES = ["rank", "mt_bench", "win_rate"]

TRANSIENT = {
    "5xx": (503, {"error": "overloaded"}),
    "429 Retry-After": (429, {"error": "slow down"}, 0.0, {"Retry-After": "0"}),
    "malformed JSON": Fault("raw", b'{"choices": [{"index": 0, "text"'),
    "slower than the timeout": (200, {}, 3.0),
    "trickled body": lambda request: Fault("trickle", body(request) + b" " * 60, interval=0.05),
    "connection cut mid-body": lambda request: Fault("cut", body(request)),
    "bad status line": Fault("bad_status_line"),
}


@pytest.mark.parametrize("fault", list(TRANSIENT))
@pytest.mark.parametrize("caller", list(CALLERS))
def test_a_transient_fault_is_retried_once_then_succeeds(server, tmp_path, tokenizer, caller, fault):
    run, requests = CALLERS[caller]
    server.reply = script([TRANSIENT[fault]], healthy)
    start = time.monotonic()
    value, errors = run(server.base_url, tmp_path, tokenizer)
    assert errors == 0 and len(server.requests) == requests + 1
    assert time.monotonic() - start < 4.0  # the trickle is cut at the 1 s deadline, not read for 10 s
    server.reply, server.requests[:] = healthy, []
    assert run(server.base_url, tmp_path / "clean", tokenizer) == (value, 0)  # the same as a run without the fault


def test_a_trickled_body_fails_at_the_generation_timeout(server, tokenizer, tmp_path):
    server.reply = lambda request: Fault("trickle", body(request), interval=0.3)  # ~200 bytes: a minute at 0.3 s
    start = time.monotonic()
    with pytest.raises(EndpointError, match="timed out|still arriving"):
        run_server(server.base_url, tmp_path, tokenizer, timeout=2.0, retries=0)
    assert time.monotonic() - start < 3.5


@pytest.mark.parametrize("caller", JUDGES)
def test_a_reply_cut_at_its_token_limit_is_asked_again_never_scored(server, tmp_path, tokenizer, caller):
    run, requests = CALLERS[caller]
    server.reply = script([(200, chat(CUT, "length"))], healthy)  # cut once, then whole
    value, errors = run(server.base_url, tmp_path / "once", tokenizer)
    assert errors == 0 and len(server.requests) == requests + 1 and "3" not in json.dumps(value)
    server.reply, server.requests[:] = (lambda request: (200, chat(CUT, "length"))), []  # always cut
    if caller == "rank":  # both candidates unparseable: the row is dropped, never scored [3, 3]
        with pytest.raises(ValueError, match="Every row was dropped"):
            run(server.base_url, tmp_path / "always", tokenizer)
        record = read_jsonl(tmp_path / "always" / "rank" / "verdicts.jsonl")[-1]
        assert record["scores"] == [None, None] and record["parse_errors"] == 2
    elif caller == "win_rate":  # the one prompt is an error, never a win
        with pytest.raises(ValueError, match="every verdict was an error"):
            run(server.base_url, tmp_path / "always", tokenizer)
        assert read_jsonl(tmp_path / "always" / "wr.jsonl")[-1]["verdicts"] == [None, None]
    else:
        per_turn, errors = run(server.base_url, tmp_path / "always", tokenizer)
        assert errors == 1 and per_turn == {}
    assert len(server.requests) == 2 * requests  # asked again once each (bounded), then counted as an error


@pytest.mark.parametrize("caller", list(CALLERS))
def test_fewer_choices_or_a_redirect_is_a_clear_error(server, tmp_path, tokenizer, caller):
    run, _ = CALLERS[caller]
    server.reply = lambda request: (200, {"choices": []})
    if caller == "server":  # the backend asks again for missing samples; never a wrong count or a traceback
        try:
            value, _ = run(server.base_url, tmp_path, tokenizer, retries=0)
            assert [len(c) for c in value] == [2]
        except EndpointError as error:
            assert "completions" in str(error)
    else:
        with pytest.raises(EndpointError, match="not a chat completion"):
            run(server.base_url, tmp_path, tokenizer, retries=0)
    other = StubServer(healthy)  # another host: the key must not follow the redirect
    try:
        server.requests[:] = []
        server.reply = lambda r: (307, {}, 0.0, {"Location": other.base_url + "/chat/completions?token=abc"})
        with pytest.raises(EndpointError, match="redirected") as error:
            run(server.base_url, tmp_path / "redirect", tokenizer, retries=0)
        assert other.requests == [] and "token=abc" not in str(error.value) and not leaked(str(error.value))
        assert server.requests[0]["auth"] == f"Bearer {KEY}"
    finally:
        other.close()


def test_an_error_body_echoing_the_key_never_leaks_it_at_any_offset(server, tmp_path, tokenizer):
    judge = client(server.base_url, retries=0)
    backend = ServerBackend(base_url=server.base_url, served_model="m", api_key_env=KEY_ENV, max_retries=0,
                            prompt_format="text")  # fmt: skip
    assert len(KEY) == 34
    for offset in range(300 - len(KEY) - 4, 300 + 4):  # the key straddles the 300-character cut
        for status in (400, 503):
            server.reply = lambda request, s=status, o=offset: (s, "x" * o + KEY + " was rejected")
            with pytest.raises(EndpointError) as error:
                judge.chat([{"role": "user", "content": "hi"}])
            assert not leaked(str(error.value)), (offset, status, str(error.value)[-60:])
            with pytest.raises(EndpointError) as error:
                sample_completions(None, tokenizer, ["hi"], 1, backend, progress=False)
            assert not leaked(str(error.value)), (offset, status)
    server.reply = lambda request: (401, "x" * 270 + KEY)
    for caller in JUDGES:  # and through each command's own error path
        with pytest.raises(EndpointError) as error:
            CALLERS[caller][0](server.base_url, tmp_path / caller, tokenizer, retries=0)
        assert not leaked(str(error.value))


@pytest.mark.parametrize("caller", JUDGES)
def test_a_judge_reply_quoting_the_key_is_stored_masked(server, tmp_path, tokenizer, caller):
    quoted = f"You sent Authorization: Bearer {KEY} and the key {KEY}. " + HEALTHY
    server.reply = lambda request: (200, chat(quoted))
    value, errors = CALLERS[caller][0](server.base_url, tmp_path, tokenizer)
    assert errors == 0
    stored = "".join(p.read_text() for p in tmp_path.rglob("*.jsonl"))  # verdicts, judgments, ranked rows
    assert stored and not leaked(stored) and "***" in stored


# ------------------------------------------------------------------------------------------- one prompt refused
def refuse_museum(request: dict):
    """HTTP 400 for the museum prompt (e.g. too long for the judge's context), the others answered after 0.3 s, so
    they are in flight when the refusal arrives."""
    text = json.dumps(request)
    if "museum" in text:
        return 400, {"error": {"message": "This model's maximum context length is 8192 tokens."}}
    status, reply = healthy(request)
    return status, reply, 0.3


def test_rank_keeps_what_was_paid_for_when_one_prompt_is_refused(server, tmp_path):
    server.reply = refuse_museum
    candidates = [[GOOD, BAD]] * 4
    data = rank_candidates(PROMPTS, candidates, judge=client(server.base_url), output_dir=tmp_path, max_workers=4)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["refused_prompts"] == [2] and len(data) == 3  # the others were judged and written
    saved = {r["index"]: r for r in read_jsonl(tmp_path / "verdicts.jsonl")}
    assert sorted(saved) == [0, 1, 2] + [3] and all(saved[i]["scores"] == [4.0, 4.0] for i in (0, 1, 3))
    paid = len(server.requests)
    assert paid == 8  # every request once: a refusal is not retried
    server.reply, server.requests[:] = healthy, []  # the rerun asks for the refused prompt only
    data = rank_candidates(PROMPTS, candidates, judge=client(server.base_url), output_dir=tmp_path, max_workers=4)
    assert len(data) == 4 and len(server.requests) == 2
    assert all("museum" in json.dumps(r["messages"]) for r in server.requests)
    assert json.loads((tmp_path / "summary.json").read_text())["refused_prompts"] == []


def test_rank_cli_names_the_refused_prompts_and_exits_1(server, tmp_path, capsys):
    server.reply = refuse_museum
    rows = tmp_path / "in.jsonl"
    rows.write_text("".join(json.dumps({"prompt": p, "completions": [GOOD, BAD]}) + "\n" for p in PROMPTS))
    code = cli("rank", "--input", rows, "--output_dir", tmp_path / "out", "--judge_base_url", server.base_url,
               "--judge_model", "judge", "--judge_api_key_env", KEY_ENV, "--judge_max_retries", 0)  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "refused prompts [2]" in err and (tmp_path / "out" / "ranked.jsonl").exists()
    assert not leaked(err)


def test_win_rate_counts_a_refused_prompt_as_an_error_and_judges_the_rest(server, tmp_path):
    server.reply = refuse_museum
    model = [{"index": i, "prompt": p, "completions": [GOOD]} for i, p in enumerate(PROMPTS)]
    base = [{"index": i, "prompt": p, "completions": [BAD]} for i, p in enumerate(PROMPTS)]
    cache = tmp_path / "wr.jsonl"
    result = llm_judge_win_rate(model, base, client(server.base_url), cache_file=cache, max_workers=4)
    assert (result.errors, result.n) == (1, 3)
    server.reply, server.requests[:] = healthy, []
    result = llm_judge_win_rate(model, base, client(server.base_url), cache_file=cache, max_workers=4)
    assert (result.errors, result.n, len(server.requests)) == (0, 4, 2)  # only the refused prompt, both orders


def test_mt_bench_counts_a_refused_question_as_an_error_and_judges_the_rest(server, tmp_path):
    server.reply = refuse_museum
    rows = [{"question_id": i, "turns": [p], "answers": ["Soup."]} for i, p in enumerate(PROMPTS)]
    result = judge_single(rows, client(server.base_url), tmp_path / "mt.jsonl")
    assert result.errors == 1 and result.judged == 3


def test_the_server_backend_names_a_refused_prompt(server, tokenizer):
    server.reply = refuse_museum
    backend = ServerBackend(base_url=server.base_url, served_model="m", api_key_env=KEY_ENV, max_retries=0,
                            prompt_format="text", concurrency=4)  # fmt: skip
    with pytest.raises(EndpointError, match="refused the request: HTTP 400.*maximum context length"):
        sample_completions(None, tokenizer, PROMPTS, 2, backend, progress=False)


# ------------------------------------------------------------------------------------------- kill and resume
class KillAt:
    """A healthy stub that holds request `n` (and every later one) unanswered and sets `reached`; the test then kills
    the process. `answered` are the request bodies answered before the kill."""

    def __init__(self, n: int):
        self.n, self.count, self.lock = n, 0, threading.Lock()
        self.reached, self.answered = threading.Event(), []

    def __call__(self, request):
        with self.lock:
            self.count += 1
            hold = self.count >= self.n
            if not hold:
                self.answered.append(canonical(request))
        if hold:
            self.reached.set()
            return 200, {}, 600.0  # woken at shutdown
        return healthy(request)


def canonical(request: dict) -> str:
    return json.dumps({k: v for k, v in request.items() if k not in ("path", "auth")}, sort_keys=True)


def kill_during(code: str, server: StubServer, kill: KillAt) -> None:
    """Run `code` in a child Python process and SIGKILL it once the stub holds request `kill.n` (bounded: 120 s)."""
    server.reply = kill
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent)}
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert kill.reached.wait(120), child.stderr.read().decode()[-2000:] if child.poll() is not None else "no"
        time.sleep(0.5)  # requests answered before the held one are written by now
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)


def resume_and_compare(server, run, kill: KillAt, reference_dir: Path) -> None:
    """Resume in this process, then run uninterrupted into `reference_dir`: equal results, nothing asked twice."""
    resumed_requests = []
    server.reply = lambda r: resumed_requests.append(canonical(r)) or healthy(r)
    resumed = run()
    asked_again = set(kill.answered) & set(resumed_requests)
    assert not asked_again, f"{len(asked_again)} requests answered before the kill were asked again"
    reference_requests = []
    server.reply = lambda r: reference_requests.append(canonical(r)) or healthy(r)
    assert run(reference_dir) == resumed
    assert sorted(kill.answered + resumed_requests) == sorted(reference_requests)


def test_rank_killed_and_resumed_equals_an_uninterrupted_run(server, tmp_path):
    candidates = [[GOOD, BAD]] * 4
    code = (
        "from trl_rankalign.sampling.llm_judge import JudgeClient\n"
        "from trl_rankalign.sampling.rank import rank_candidates\n"
        f"rank_candidates({PROMPTS!r}, {candidates!r}, output_dir={str(tmp_path / 'run')!r}, max_workers=1,\n"
        f"    judge=JudgeClient({server.base_url!r}, 'judge', api_key_env={KEY_ENV!r}, max_retries=0))\n"
    )
    kill = KillAt(5)  # prompts 0 and 1 (two candidates each) answered, prompt 2 in flight
    kill_during(code, server, kill)
    assert len(read_jsonl(tmp_path / "run" / "verdicts.jsonl")) == 2

    def run(folder=tmp_path / "run"):
        rank_candidates(PROMPTS, candidates, judge=client(server.base_url), output_dir=folder, max_workers=1)
        return (folder / "ranked.jsonl").read_text()

    resume_and_compare(server, run, kill, tmp_path / "reference")


def test_eval_generate_killed_and_resumed_equals_an_uninterrupted_run(server, tmp_path, tiny_path):
    from trl_rankalign.sampling.answers import generate_answers

    options = dict(backend="server", base_url=server.base_url, served_model="m", batch_size=1, do_sample=True,
                   max_new_tokens=8, num_samples=2, concurrency=1)  # fmt: skip
    code = (
        "from trl_rankalign.sampling.answers import generate_answers\n"
        f"generate_answers({str(tiny_path)!r}, {PROMPTS!r}, {str(tmp_path / 'run.jsonl')!r}, **{options!r})\n"
    )
    kill = KillAt(3)
    kill_during(code, server, kill)

    def run(file=tmp_path / "run.jsonl"):
        return [r["completions"] for r in generate_answers(tiny_path, PROMPTS, file, **options)]

    resume_and_compare(server, run, kill, tmp_path / "reference.jsonl")


def test_multi_turn_generate_killed_and_resumed_equals_an_uninterrupted_run(server, tmp_path, tiny_path):
    from trl_rankalign.sampling.multi_turn import generate_multi_turn_answers

    questions = [
        {"question_id": i, "category": c, "turns": [p, "Say it in fewer words."]}
        for i, (p, c) in enumerate(zip(PROMPTS, ["writing", "math", "writing", "stem"]))
    ]
    options = dict(backend="server", base_url=server.base_url, served_model="m", concurrency=1, max_new_tokens=8,
                   temperature=0.7, seed=0, model_identity="m", prompt_format="text")  # fmt: skip
    code = (
        "from transformers import AutoTokenizer\n"
        "from trl_rankalign.sampling.multi_turn import generate_multi_turn_answers\n"
        f"tokenizer = AutoTokenizer.from_pretrained({str(tiny_path)!r})\n"
        f"generate_multi_turn_answers(None, tokenizer, {questions!r}, {str(tmp_path / 'run.jsonl')!r}, **{options!r})\n"
    )
    kill = KillAt(6)  # all of turn 1 and one question of turn 2 answered: only the question in flight is lost
    kill_during(code, server, kill)
    assert len(read_jsonl(tmp_path / "run.jsonl")) == 5
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)

    def run(file=tmp_path / "run.jsonl"):
        return generate_multi_turn_answers(None, tokenizer, questions, file, **options)

    resume_and_compare(server, run, kill, tmp_path / "reference.jsonl")


# ------------------------------------------------------------------------------------------- hostile inputs
def test_rank_names_a_bad_reward_model_output_dir_or_limit_in_one_line(tmp_path, capsys, monkeypatch):
    rows = tmp_path / "in.jsonl"
    rows.write_text("".join(json.dumps({"prompt": p, "completions": [GOOD, BAD]}) + "\n" for p in PROMPTS))
    base = ["rank", "--input", rows, "--output_dir", tmp_path / "out"]
    monkeypatch.chdir(tmp_path)
    for missing in (tmp_path / "no_such_rm", "no_such_rm", "org/no_such_rm"):
        assert cli(*base, "--reward_model", missing) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(missing) in err and "Repo id" not in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    (tmp_path / "a_file").write_text("x")
    for output_dir in (tmp_path / "a_file", tmp_path / "a_file" / "below"):
        assert cli(*base[:-1], output_dir, "--reward_fn", "trl_rankalign.tiny.language:reward_fn") == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "a_file" in err and "Traceback" not in err
    # a negative limit is refused (it used to drop the last prompt: rows[:-1])
    assert cli(*base, "--reward_fn", "trl_rankalign.tiny.language:reward_fn", "--limit", -1) == 1
    assert "limit must be a positive number" in capsys.readouterr().err
    assert cli(*base, "--reward_fn", "trl_rankalign.tiny.language:reward_fn", "--limit", 3) == 0
    assert len((tmp_path / "out" / "ranked.jsonl").read_text().splitlines()) == 3
