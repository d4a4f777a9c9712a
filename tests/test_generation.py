"""The generation layer (`trl_rankalign.sampling.generation`): the transformers backend's prefill-once sampling against
`generate(num_return_sequences=n)`, the OpenAI-compatible server backend against a stub on 127.0.0.1, the entry point
`sample_completions`, and every command that samples going through it."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from stub_completions import StubCompletions, sample_text
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_rankalign.sampling.generation import (
    GENERATION_NAMES,
    Decoding,
    TransformersBackend,
    generate_completions,
    make_backend,
    render_prompt,
    sample_and_score,
    sample_completions,
)
from trl_rankalign.sampling.server import GenerationServerError, ServerBackend, request_seed
from trl_rankalign.tiny.language import reward_fn


ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    "Review of the pasta:",
    "Your thoughts on the salad, the long train ride and the museum we visited last week:",  # longer: left padding
    [{"role": "user", "content": "Review of the hotel room:"}],  # rendered with the chat template
    "Review:",
]


@pytest.fixture(scope="module")
def tiny(tiny_path):
    return AutoModelForCausalLM.from_pretrained(tiny_path), AutoTokenizer.from_pretrained(tiny_path)


@pytest.fixture
def completions_server():
    """An OpenAI-compatible /v1/completions stub on 127.0.0.1 (tests/stub_completions.py), shut down after the test."""
    server = StubCompletions()
    yield server
    server.close()


def server_options(server, **overrides):
    return {"base_url": server.base_url, "served_model": "tiny-policy", "max_retries": 1, "timeout": 5.0, **overrides}


# ------------------------------------------------------------------------------------------- transformers backend
DECODINGS = {
    "greedy": dict(temperature=0.0),
    "sampling": dict(temperature=1.0),
    "top_k_top_p": dict(temperature=0.7, top_k=40, top_p=0.9),
}


@pytest.mark.parametrize("decoding", list(DECODINGS), ids=list(DECODINGS))
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_prefill_once_draws_exactly_what_generate_draws(tmp_path_factory, decoding, arch):
    """Same seed, same draws as `generate(num_return_sequences=n)`: the same logits go through the same processors,
    so the sampling distribution is generate's (here token for token), with a static or a repeated dynamic cache."""
    from trl_rankalign.tiny import tiny_model_path

    path = tiny_model_path(arch=arch, cache_dir=tmp_path_factory.getbasetemp() / "tiny_cache")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    outputs = {}
    for name, options in {
        "generate": dict(prefill_once=False),
        "static": dict(),
        "dynamic": dict(static_cache=False),
    }.items():
        backend = TransformersBackend(batch_size=4, **options)
        outputs[name] = sample_completions(
            model, tokenizer, PROMPTS, 5, backend, max_new_tokens=12, seed=3, progress=False, **DECODINGS[decoding]
        )
    assert outputs["static"] == outputs["generate"] and outputs["dynamic"] == outputs["generate"]
    assert [len(c) for c in outputs["generate"]] == [5] * len(PROMPTS)
    if decoding != "greedy":
        assert any(len(set(c)) > 1 for c in outputs["generate"])  # really sampled


def test_each_prompt_is_prefilled_once(tiny):
    """generate(num_return_sequences=n) embeds B*n prompts of length L; prefill-once embeds B prompts of length L-1,
    then the B*n samples one token at a time."""
    model, tokenizer = tiny
    shapes = []
    handle = model.get_input_embeddings().register_forward_hook(
        lambda m, args, out: shapes.append(tuple(args[0].shape))
    )
    try:
        length = tokenizer(PROMPTS[:2], padding=True, return_tensors="pt")["input_ids"].shape[1]
        sample_completions(model, tokenizer, PROMPTS[:2], 8, max_new_tokens=4, batch_size=2, progress=False)
        assert shapes[0] == (2, length - 1) and all(shape == (16, 1) for shape in shapes[1:])
        shapes.clear()
        reference = TransformersBackend(batch_size=2, prefill_once=False)
        sample_completions(model, tokenizer, PROMPTS[:2], 8, reference, max_new_tokens=4, progress=False)
        assert shapes[0] == (16, length)
    finally:
        handle.remove()


def test_reproducible_for_a_seed_and_the_callers_rng_untouched(tiny):
    model, tokenizer = tiny
    state = torch.random.get_rng_state()
    first = sample_completions(model, tokenizer, PROMPTS, 4, seed=7, max_new_tokens=8, progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert sample_completions(model, tokenizer, PROMPTS, 4, seed=7, max_new_tokens=8, progress=False) == first
    assert sample_completions(model, tokenizer, PROMPTS, 4, seed=8, max_new_tokens=8, progress=False) != first
    # batch b is seeded seed + b: batches of 2 from seed 7 are the call on the first two, then the last two at seed 8
    halves = sample_completions(model, tokenizer, PROMPTS, 4, seed=7, max_new_tokens=8, batch_size=2, progress=False)
    assert halves[:2] == sample_completions(
        model, tokenizer, PROMPTS[:2], 4, seed=7, max_new_tokens=8, batch_size=2, progress=False
    )
    assert halves[2:] == sample_completions(
        model, tokenizer, PROMPTS[2:], 4, seed=8, max_new_tokens=8, batch_size=2, progress=False
    )


def test_entry_point_shapes_progress_bar_and_schema_form(tiny, capsys):
    model, tokenizer = tiny
    texts = sample_completions(model, tokenizer, PROMPTS, 3, max_new_tokens=6, desc="Sampling the tiny prompts")
    assert len(texts) == len(PROMPTS) and all(len(c) == 3 and all(isinstance(t, str) for t in c) for c in texts)
    assert "Sampling the tiny prompts" in capsys.readouterr().err  # the progress bar
    schema = generate_completions(model, tokenizer, PROMPTS, 2, batch_size=4, seed=0)
    assert isinstance(schema[0][0], str) and schema[2][0][0]["role"] == "assistant"  # chat prompts: messages
    assert sample_completions(model, tokenizer, [], 3, progress=False) == []


def test_bad_options_are_clear_errors(tiny):
    model, tokenizer = tiny
    for bad, match in [
        (dict(temperature=-1.0), "temperature"),
        (dict(top_k=-1), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(max_new_tokens=0), "max_new_tokens"),
    ]:
        with pytest.raises(ValueError, match=match):
            sample_completions(model, tokenizer, PROMPTS, 2, progress=False, **bad)
    with pytest.raises(ValueError, match="Unknown generation backend"):
        sample_completions(model, tokenizer, PROMPTS, 2, backend="tgi", progress=False)
    with pytest.raises(ValueError, match="base URL"):
        make_backend("server", served_model="m")
    with pytest.raises(ValueError, match="served model"):
        make_backend("server", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match="num_samples"):
        sample_completions(model, tokenizer, PROMPTS, 0, progress=False)


# ------------------------------------------------------------------------------------------- server backend
def test_server_backend_asks_n_samples_per_prompt_in_one_request(tiny, completions_server, monkeypatch):
    _, tokenizer = tiny
    monkeypatch.setenv("GEN_TEST_KEY", "sk-gen")
    options = server_options(completions_server, api_key_env="GEN_TEST_KEY")
    texts = sample_completions(
        None, tokenizer, PROMPTS, 4, "server", temperature=0.7, top_p=0.9, max_new_tokens=9, seed=5, **options
    )
    requests = completions_server.requests
    assert len(requests) == len(PROMPTS) and {r["path"] for r in requests} == {"/v1/completions"}
    assert {r["auth"] for r in requests} == {"Bearer sk-gen"}
    by_prompt = {json.dumps(r["prompt"]): r for r in requests}
    for i, prompt in enumerate(PROMPTS):
        ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        request = by_prompt[json.dumps(ids)]  # the exact tokens the trainers see (chat template rendered locally)
        assert (request["model"], request["n"], request["max_tokens"]) == ("tiny-policy", 4, 9)
        assert (request["temperature"], request["top_p"], request["seed"]) == (0.7, 0.9, request_seed(5, i))
        assert "top_k" not in request  # 0 = off: not sent (OpenAI's API has no top_k)
        assert texts[i] == [sample_text(ids, request["seed"], k) for k in range(4)]
    assert "<|im_start|>user" in render_prompt(tokenizer, PROMPTS[2])
    # reproducible for a seed; top-k is sent when set; greedy asks one sample and repeats it
    completions_server.requests.clear()
    again = sample_completions(
        None, tokenizer, PROMPTS, 4, "server", temperature=0.7, top_p=0.9, max_new_tokens=9, seed=5, **options
    )
    assert again == texts
    sample_completions(None, tokenizer, PROMPTS[:1], 2, "server", top_k=40, progress=False, **options)
    assert completions_server.requests[-1]["top_k"] == 40
    greedy = sample_completions(None, tokenizer, PROMPTS[:1], 3, "server", temperature=0, progress=False, **options)
    assert completions_server.requests[-1]["n"] == 1 and len(set(greedy[0])) == 1 and len(greedy[0]) == 3
    # text prompts for servers that take only strings
    sample_completions(None, tokenizer, PROMPTS[2:3], 2, "server", prompt_format="text", progress=False, **options)
    assert completions_server.requests[-1]["prompt"] == render_prompt(tokenizer, PROMPTS[2])


def test_server_backend_concurrency_retries_and_errors(tiny, completions_server):
    _, tokenizer = tiny
    completions_server.reply = lambda request: (*_ok(request), 0.2)
    sample_completions(None, tokenizer, PROMPTS * 2, 2, "server", concurrency=3, progress=False,
                       **server_options(completions_server))  # fmt: skip
    # concurrent and bounded (what the server saw in flight; a wall-clock bound failed on a loaded 2-core box)
    assert completions_server.max_in_flight == 3
    # transient failures are retried with backoff (Retry-After honoured), then the request succeeds
    replies = iter([(503, {"error": "busy"}), (429, {"error": "slow down"}, 0.0, {"Retry-After": "0"})])
    completions_server.reply = lambda request: next(replies, None) or _ok(request)
    completions_server.requests.clear()
    backend = ServerBackend(**server_options(completions_server, max_retries=2, backoff=0.01))
    assert len(sample_completions(None, tokenizer, PROMPTS[:1], 2, backend, progress=False)[0]) == 2
    assert len(completions_server.requests) == 3
    # a refusal is not retried; a reply that is not n completions is an error, never a short list
    completions_server.requests.clear()
    completions_server.reply = lambda request: (401, {"error": "bad key"})
    with pytest.raises(GenerationServerError, match="HTTP 401"):
        sample_completions(None, tokenizer, PROMPTS[:1], 2, backend, progress=False)
    assert len(completions_server.requests) == 1
    for choices in ([], [{"index": i, "text": "x"} for i in range(3)], [{"index": 0}]):  # none, too many, no text
        completions_server.reply = lambda request, choices=choices: (200, {"choices": choices})
        with pytest.raises(GenerationServerError, match="not 2 completions"):
            sample_completions(None, tokenizer, PROMPTS[:1], 2, backend, progress=False)
    with pytest.raises(GenerationServerError, match="connection failed"):
        sample_completions(None, tokenizer, PROMPTS[:1], 2, "server", progress=False,
                           **server_options(completions_server, base_url="http://127.0.0.1:9/v1", max_retries=0))  # fmt: skip
    assert ServerBackend(
        **server_options(completions_server, requests_per_second=20)
    ).endpoint.rate_limiter.interval == (0.05)


def _ok(request):
    from stub_completions import default_reply

    return default_reply(request)


def _one_choice(request):
    """A server that ignores `n` (as `transformers serve` does): one choice per request, drawn from its seed."""
    prompt = request.get("prompt", request.get("messages"))
    return 200, {"choices": [{"index": 0, "text": sample_text(prompt, request["seed"], 0)}]}


def test_server_backend_asks_again_when_the_server_returns_fewer_choices(tiny, completions_server, caplog):
    """A server that ignores `n` is asked again for the rest, concurrently, each request with its own seed (the first
    one still `request_seed(seed, i)`); one that caps `n` is then asked in requests of its cap."""
    _, tokenizer = tiny
    completions_server.reply = _one_choice
    texts = sample_completions(None, tokenizer, PROMPTS[:2], 3, "server", seed=5, progress=False,
                               **server_options(completions_server, concurrency=6))  # fmt: skip
    assert [len(t) for t in texts] == [3, 3] and len(completions_server.requests) == 6
    for i in range(2):
        ids = tokenizer(PROMPTS[i], add_special_tokens=False)["input_ids"]
        seeds = sorted(r["seed"] for r in completions_server.requests if r["prompt"] == ids)
        assert seeds == sorted(request_seed(5, i, a) for a in range(3)) and len(set(seeds)) == 3
        assert texts[i] == [sample_text(ids, request_seed(5, i, a), 0) for a in range(3)]  # in request order
    assert completions_server.max_in_flight > 1  # the follow-up requests overlap
    assert "identical samples" not in caplog.text  # distinct samples: no greedy warning

    def capped(request):  # at most 2 choices per request
        return _ok({**request, "n": min(request["n"], 2)})

    completions_server.reply = capped
    completions_server.requests.clear()
    texts = sample_completions(None, tokenizer, PROMPTS[:1], 5, "server", progress=False,
                               **server_options(completions_server))  # fmt: skip
    asked = [r["n"] for r in completions_server.requests]
    # one request for 5 (2 come back), then the missing 3 in requests of at most the cap, sent concurrently (any order)
    assert len(texts[0]) == 5 and asked[0] == 5 and sorted(asked[1:]) == [1, 2]


def test_server_backend_warns_once_when_the_server_decodes_greedily(tiny, completions_server, caplog):
    _, tokenizer = tiny
    completions_server.reply = lambda request: (200, {"choices": [{"index": 0, "text": " same"}]})
    backend = ServerBackend(**server_options(completions_server))
    with caplog.at_level("WARNING", logger="trl_rankalign.sampling.server"):
        for _ in range(2):  # e.g. two batches of one `sample_and_score` call: one warning
            assert sample_completions(None, tokenizer, PROMPTS[:2], 2, backend, progress=False) == [[" same"] * 2] * 2
    warnings = [r for r in caplog.records if "identical samples" in r.getMessage()]
    assert len(warnings) == 1 and "decodes greedily" in warnings[0].getMessage()
    caplog.clear()
    sample_completions(None, tokenizer, PROMPTS[:2], 2, "server", temperature=0, progress=False,
                       **server_options(completions_server))  # fmt: skip
    assert "identical samples" not in caplog.text  # greedy asked for: nothing to say


def test_server_backend_chat_route(tiny, completions_server):
    """`endpoint="chat"` sends messages to /v1/chat/completions (a string prompt as one user message) and reads
    `choices[].message.content`; `"auto"` sends only chat prompts there. The route is part of the cache identity."""
    _, tokenizer = tiny

    def reply(request):
        if "messages" in request:
            n = request["n"]
            return 200, {
                "choices": [{"index": k, "message": {"role": "assistant", "content": f"c{k}"}} for k in range(n)]
            }
        return _ok(request)

    completions_server.reply = reply
    chat = sample_completions(None, tokenizer, PROMPTS[2:4], 2, "server", endpoint="chat", progress=False,
                              **server_options(completions_server))  # fmt: skip
    assert chat == [["c0", "c1"]] * 2
    first, second = completions_server.requests
    assert {first["path"], second["path"]} == {"/v1/chat/completions"} and "prompt" not in first
    assert sorted([first["messages"], second["messages"]], key=str) == sorted(
        [PROMPTS[2], [{"role": "user", "content": PROMPTS[3]}]], key=str
    )  # the two requests run concurrently: their arrival order is not part of the contract
    completions_server.requests.clear()
    sample_completions(None, tokenizer, PROMPTS[2:4], 2, "server", endpoint="auto", progress=False,
                       **server_options(completions_server))  # fmt: skip
    assert sorted(r["path"] for r in completions_server.requests) == ["/v1/chat/completions", "/v1/completions"]
    identities = {route: ServerBackend(**server_options(completions_server), endpoint=route).identity(None)
                  for route in ("completions", "chat")}  # fmt: skip
    assert identities == {"completions": "served:tiny-policy", "chat": "served:tiny-policy:chat"}
    text = {route: ServerBackend(**server_options(completions_server), endpoint=route, prompt_format="text").identity(None)
            for route in ("completions", "chat")}  # fmt: skip
    assert text == {"completions": "served:tiny-policy:text", "chat": "served:tiny-policy:chat"}  # server-tokenized
    with pytest.raises(ValueError, match="endpoint must be one of"):
        ServerBackend(**server_options(completions_server), endpoint="responses")


def test_server_error_masks_the_key_before_cutting_the_reply(tiny, completions_server, monkeypatch):
    """A key that straddles the cut of an echoed reply must not leave its first half in the message."""
    _, tokenizer = tiny
    key = "sk-" + "k" * 40
    monkeypatch.setenv("GEN_TEST_KEY", key)
    padding = "x" * 280  # puts the key across the 300th character of str(reply)
    completions_server.reply = lambda request: (200, {"echo": padding + key})
    with pytest.raises(GenerationServerError) as raised:
        sample_completions(None, tokenizer, PROMPTS[:1], 2, "server", progress=False,
                           **server_options(completions_server, api_key_env="GEN_TEST_KEY"))  # fmt: skip
    message = str(raised.value)
    assert "sk-kkk" not in message and "***" in message


def test_transformers_generation_names_on_every_backend(tiny, completions_server):
    """`sample_completions` takes transformers' own names (`do_sample`, `min_new_tokens`, `repetition_penalty`, ...);
    an unknown name fails listing the accepted ones; a backend that cannot apply a setting refuses it."""
    model, tokenizer = tiny
    names = dict(do_sample=True, min_new_tokens=4, max_new_tokens=4, repetition_penalty=1.3, top_k=5, seed=1)
    texts = sample_completions(model, tokenizer, PROMPTS[:2], 2, progress=False, **names)
    assert [len(t) for t in texts] == [2, 2]
    lengths = {len(tokenizer(t, add_special_tokens=False)["input_ids"]) for ts in texts for t in ts}
    assert lengths and min(lengths) >= 2  # EOS held back for 4 tokens (decoding may merge a few)
    config = TransformersBackend().config_for(model, tokenizer, Decoding(min_new_tokens=4, repetition_penalty=1.3))
    assert (config.min_new_tokens, config.repetition_penalty) == (4, 1.3)
    assert TransformersBackend().config_for(model, tokenizer, Decoding()).min_new_tokens != 4  # unset: left alone
    greedy = sample_completions(model, tokenizer, PROMPTS[:1], 3, do_sample=False, max_new_tokens=6, progress=False)
    assert len(set(greedy[0])) == 1
    with pytest.raises(ValueError, match="contradicts temperature=0"):
        sample_completions(model, tokenizer, PROMPTS[:1], 2, do_sample=True, temperature=0, progress=False)
    with pytest.raises(ValueError, match="do_sample must be True or False"):
        sample_completions(model, tokenizer, PROMPTS[:1], 2, do_sample="yes", progress=False)
    with pytest.raises(ValueError, match="num_beams") as raised:
        sample_completions(model, tokenizer, PROMPTS[:1], 2, num_beams=4, progress=False)
    assert all(name in str(raised.value) for name in GENERATION_NAMES) and "batch_size" in str(raised.value)
    with pytest.raises(ValueError, match="Unknown option.*server backend options"):
        sample_completions(None, tokenizer, PROMPTS[:1], 2, "server", typical_p=0.9, progress=False,
                           **server_options(completions_server))  # fmt: skip

    sample_completions(None, tokenizer, PROMPTS[:1], 2, "server", do_sample=True, min_new_tokens=3,
                       repetition_penalty=1.2, progress=False, **server_options(completions_server))  # fmt: skip
    request = completions_server.requests[-1]
    assert (request["min_tokens"], request["repetition_penalty"], request["n"]) == (3, 1.2, 2)
    sample_completions(None, tokenizer, PROMPTS[:1], 2, "server", progress=False, **server_options(completions_server))
    assert not {"min_tokens", "repetition_penalty"} & set(completions_server.requests[-1])  # defaults: not sent

    class Minimal:  # a backend object that applies only the basic settings (as the vLLM backend)
        name = "minimal"

        def identity(self, model):
            return "minimal"

        def generate(self, model, tokenizer, texts, num_samples, decoding, progress=False, desc=""):
            return [["x"] * num_samples for _ in texts]

    assert sample_completions(None, tokenizer, PROMPTS[:1], 2, Minimal(), do_sample=False) == [["x", "x"]]
    with pytest.raises(ValueError, match=r"minimal backend does not apply \['min_new_tokens'\]"):
        sample_completions(None, tokenizer, PROMPTS[:1], 2, Minimal(), min_new_tokens=2)


def test_sample_and_score_with_the_server_and_no_local_model(tiny, completions_server, tmp_path):
    _, tokenizer = tiny
    cache = tmp_path / "samples.jsonl"
    kwargs = dict(
        scorer=reward_fn, batch_size=2, cache_file=cache, backend="server", **server_options(completions_server)
    )
    rows = sample_and_score(None, tokenizer, PROMPTS, 3, **kwargs)
    assert [row["index"] for row in rows] == [0, 1, 2, 3] and len(completions_server.requests) == 4
    assert all(row["scores"] == reward_fn(None, row["completions"]) for row in rows)
    assert (
        rows[2]["completions"][0][0]["role"] == "assistant" and rows[0]["generation"]["model"] == "served:tiny-policy"
    )
    completions_server.requests.clear()
    assert sample_and_score(None, tokenizer, PROMPTS, 3, **kwargs) == rows and completions_server.requests == []


# ------------------------------------------------------------------------------------------- the commands
def test_eval_generate_and_rank_through_the_server(tiny_path, completions_server, tmp_path):
    from trl_rankalign.cli.eval import add_eval_parser, run_eval
    from trl_rankalign.cli.rank import add_rank_parser, run_rank

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS if isinstance(p, str)))
    server = ["--generation_backend", "server", "--generation_base_url", completions_server.base_url,
              "--generation_model", "tiny-policy"]  # fmt: skip
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    add_eval_parser(commands)
    add_rank_parser(commands)
    args = parser.parse_args(["eval", "generate", "--model", tiny_path, "--name", "served", "--prompts", str(prompts),
                              "--output_dir", str(tmp_path / "answers"), "--do_sample", "--num_samples", "2", *server])  # fmt: skip
    assert run_eval(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "answers" / "served.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(len(row["completions"]) == 2 for row in rows)
    assert {r["n"] for r in completions_server.requests} == {2}
    args = parser.parse_args(["rank", "--input", str(prompts), "--policy", tiny_path, "--num_samples", "4",
                              "--output_dir", str(tmp_path / "ranked"), "--reward_fn",
                              "trl_rankalign.tiny.language:reward_fn", *server])  # fmt: skip
    assert run_rank(args) == 0
    summary = json.loads((tmp_path / "ranked" / "summary.json").read_text())
    assert summary["candidates"] == 12 and summary["rows"] > 0
    args = parser.parse_args(["rank", "--input", str(prompts), "--policy", tiny_path, "--policy", tiny_path,
                              "--output_dir", str(tmp_path / "r2"), "--reward_fn", "x:y", *server])  # fmt: skip
    assert run_rank(args) == 1  # one served model: one policy per run


def test_rso_sampling_through_the_server_loads_no_policy(tiny_path, completions_server, tmp_path, monkeypatch):
    from conftest import cpu_config

    from trl_rankalign import rso_sampler
    from trl_rankalign.rso_config import RSOConfig

    monkeypatch.setattr(rso_sampler, "_load_policy", lambda *a, **k: pytest.fail("the policy was loaded"))
    args = cpu_config(
        RSOConfig, tmp_path, num_candidates=4, num_accepted=2, max_new_tokens=8, sampling_batch_size=4,
        generation_backend="server", generation_base_url=completions_server.base_url, generation_model="tiny-sft",
    )  # fmt: skip
    data = rso_sampler.sample_rso_dataset(tiny_path, args, Dataset.from_dict({"prompt": PROMPTS[:2]}), reward_fn)
    assert len(completions_server.requests) == 2 and {r["n"] for r in completions_server.requests} == {4}
    assert {r["model"] for r in completions_server.requests} == {"tiny-sft"}
    for row in data["samples"]:
        assert set(row["completions"]) <= {sample_text(r["prompt"], r["seed"], k) for r in completions_server.requests
                                           for k in range(4)}  # fmt: skip


def test_raft_refuses_a_server_for_several_rounds(tmp_path):
    from conftest import cpu_config

    from trl_rankalign.raft import RAFTConfig

    server = dict(generation_backend="server", generation_base_url="http://127.0.0.1:9/v1", generation_model="m")
    with pytest.raises(ValueError, match="num_rounds=1 only"):
        cpu_config(RAFTConfig, tmp_path, num_rounds=2, **server)
    assert cpu_config(RAFTConfig, tmp_path, num_rounds=1, **server).generation_backend == "server"


@pytest.mark.slow
def test_sharded_across_two_processes_equals_one(tiny_path, tmp_path):
    """`sample_and_score` under `accelerate launch` with 2 gloo processes draws what one process draws."""
    script = tmp_path / "sample.py"
    script.write_text(
        "import json, sys\n"
        "from accelerate import PartialState\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "from trl_rankalign.sampling.generation import sample_and_score\n"
        "path, out = sys.argv[1], sys.argv[2]\n"
        "state = PartialState(cpu=True)  # gloo ranks on the CPU, as the tiny recipes' use_cpu\n"
        "model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)\n"
        f"rows = sample_and_score(model, tok, {PROMPTS * 2!r}, 3, batch_size=2, max_new_tokens=6, seed=1,"
        " cache_file=out + '.jsonl')\n"
        "if state.is_main_process:\n"
        "    open(out, 'w').write(json.dumps([r['completions'] for r in rows]))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    config = ROOT / "trl_rankalign" / "recipes" / "accelerate" / "cpu2.yaml"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
              "--main_process_port", "0", str(script), tiny_path, str(tmp_path / "two.json")]  # fmt: skip
    result = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    subprocess.run([sys.executable, str(script), tiny_path, str(tmp_path / "one.json")], env=env, check=True,
                   timeout=300)  # fmt: skip
    assert json.loads((tmp_path / "two.json").read_text()) == json.loads((tmp_path / "one.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "two.json.jsonl").read_text().splitlines()]
    assert sorted(row["index"] for row in rows) == list(range(8))  # every prompt sampled once, by one process


# ------------------------------------------------------------------------------------------- vLLM (GPU only)
@pytest.mark.gpu
def test_vllm_backend_samples_n_completions(tiny_path):
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    model = AutoModelForCausalLM.from_pretrained(tiny_path).cuda()
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    texts = sample_completions(model, tokenizer, PROMPTS, 4, "vllm", max_new_tokens=8, gpu_memory_utilization=0.2)
    assert [len(c) for c in texts] == [4] * len(PROMPTS) and all(isinstance(t, str) for c in texts for t in c)
    assert Decoding(temperature=0).do_sample is False
