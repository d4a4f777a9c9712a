"""The `server` generation backend against a real OpenAI-compatible server: `transformers serve` on 127.0.0.1 serving
SmolLM2-135M-Instruct (tests/real_model.py). Both routes, `n` samples from a server that ignores `n`, seeds honoured,
and the warning when the server decodes greedily. Fault cases (retries, refusals, malformed replies) stay with the
stub servers of tests/test_generation.py: a real server does not produce them on demand."""

import pytest
from transformers import AutoTokenizer

from trl_rankalign.sampling.generation import sample_and_score, sample_completions
from trl_rankalign.sampling.local_server import LocalTransformersServer


pytestmark = pytest.mark.real

STORY = "Once upon a time, in a small village by the sea,"
CHAT = [{"role": "user", "content": "Invent a name for a cat."}]
DECODING = dict(temperature=1.0, max_new_tokens=10, seed=3, progress=False)


@pytest.fixture(scope="module")
def tokenizer(smollm2_path):
    return AutoTokenizer.from_pretrained(smollm2_path)


def _options(server, **overrides):
    return {"base_url": server.base_url, "served_model": server.model, "max_retries": 1, "timeout": 120.0, **overrides}


def test_both_routes_give_n_distinct_samples_from_a_server_that_ignores_n(smollm2_server, tokenizer, caplog):
    """`transformers serve` answers one choice per request whatever `n` says: the backend asks again with other seeds
    until it has 3, on `/v1/completions` for the string prompt (as text) and `/v1/chat/completions` for the chat one
    (`endpoint="auto"`); `sample_and_score` caches chat-route rows under the route's identity."""
    options = _options(smollm2_server, prompt_format="text", concurrency=3)
    with caplog.at_level("WARNING"):
        texts = sample_completions(None, tokenizer, [STORY, CHAT], 3, "server", endpoint="auto", **options, **DECODING)
    assert [len(samples) for samples in texts] == [3, 3]
    assert [len(set(samples)) for samples in texts] == [3, 3] and all(t.strip() for s in texts for t in s)
    assert not any("<|im_start|>" in t for t in texts[1])  # the server applied the chat template itself
    assert "decodes greedily" not in caplog.text

    rows = sample_and_score(None, tokenizer, [CHAT], 1, backend="server", endpoint="chat", max_new_tokens=4,
                            **_options(smollm2_server, prompt_format="text"))  # fmt: skip
    assert rows[0]["generation"]["model"] == f"served:{smollm2_server.model}:chat"
    assert rows[0]["completions"][0][0]["role"] == "assistant"


def test_a_greedy_server_is_reported_once(smollm2_path, tokenizer, tmp_path, caplog):
    """The converted folder's own generation config has no `do_sample`: `transformers serve` then decodes greedily
    whatever temperature a request carries. The samples are identical and the backend says why, once."""
    server = LocalTransformersServer(smollm2_path, tmp_path / "serve.log")
    try:
        options = _options(server, prompt_format="text", concurrency=2)
        with caplog.at_level("WARNING", logger="trl_rankalign.sampling.server"):
            texts = sample_completions(None, tokenizer, [STORY], 2, "server", **options, **DECODING)
    finally:
        server.close()
    assert len(texts[0]) == 2 and len(set(texts[0])) == 1
    warnings = [r.getMessage() for r in caplog.records if "decodes greedily" in r.getMessage()]
    assert len(warnings) == 1 and "do_sample: true" in warnings[0]


def test_eval_generate_multi_turn_through_the_served_chat_route(smollm2_path, smollm2_server, tmp_path):
    """`eval generate --multi_turn` with the server backend: each turn's conversation goes to the chat route as
    messages (`--generation_endpoint auto`), and the second turn sees the model's first answer."""
    import json

    from trl_rankalign.cli import main as cli

    questions = tmp_path / "question.jsonl"
    row = {"question_id": 7, "category": "writing", "turns": ["Name a fruit.", "Now name a vegetable."]}
    questions.write_text(json.dumps(row) + "\n")
    argv = ["eval", "generate", "--model", smollm2_path, "--name", "served", "--prompts", str(questions)]
    argv += ["--multi_turn", "--output_dir", str(tmp_path), "--max_new_tokens", "8", "--generation_backend", "server"]
    argv += ["--generation_base_url", smollm2_server.base_url, "--generation_model", smollm2_server.model]
    argv += ["--generation_prompt_format", "text", "--generation_endpoint", "auto"]
    assert cli.main(argv) == 0
    (answers,) = [json.loads(line) for line in (tmp_path / "served.jsonl").read_text().splitlines()]
    assert answers["question_id"] == 7 and len(answers["answers"]) == 2 and all(a.strip() for a in answers["answers"])


def test_token_id_prompts_refused_by_a_text_only_server_name_the_option(smollm2_server, tokenizer):
    """`transformers serve` refuses token-id prompts (HTTP 400 "prompt must be a string"); the error says which
    option sends text instead."""
    from trl_rankalign.sampling.http import EndpointError

    with pytest.raises(EndpointError, match=r"HTTP 400.*set generation_prompt_format=text"):
        sample_completions(None, tokenizer, [STORY], 1, "server", **_options(smollm2_server), **DECODING)
