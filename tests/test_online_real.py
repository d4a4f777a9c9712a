"""`iterate` with `generation_backend=server` for every round against the real `transformers serve` on 127.0.0.1
(`policy_update="reload"`): the server is started without a pinned model, so it loads the checkpoint each request
names; before round 1 samples, the run asks for round 0's checkpoint by its path and checks the reply names it. The
proof that round 1 sampled round 0's weights: its samples are keyed on that path and those weights, and the server's
greedy answer under that name is token for token the local greedy answer of round 0's weights (not the SFT's)."""

import json
import urllib.request

import pytest
import torch
from conftest import cpu_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_rankalign.online import read_rounds
from trl_rankalign.sampling.local_server import LocalTransformersServer


pytestmark = pytest.mark.real


def served_greedy(server: LocalTransformersServer, model: str, prompt: str, max_tokens: int) -> str:
    """The greedy completion the server gives under `model` (its reply must name that model)."""
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
    request = urllib.request.Request(
        f"{server.base_url}/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        data = json.loads(reply.read())
    assert data["model"] == model
    return data["choices"][0]["text"]


def _local_greedy(model, tokenizer, prompt: str, max_tokens: int) -> str:
    inputs = tokenizer(prompt, return_tensors="pt")  # as the server tokenizes a text prompt
    with torch.no_grad():
        output = model.generate(**inputs, do_sample=False, max_new_tokens=max_tokens)
    return tokenizer.decode(output[0, inputs["input_ids"].size(1) :], skip_special_tokens=True)


def test_two_iterate_rounds_on_transformers_serve_follow_the_trained_weights(tiny_path, tmp_path):
    from trl_rankalign.iterative import IterativeConfig, train_iterative
    from trl_rankalign.tiny import tiny_prompt_dataset
    from trl_rankalign.tiny.language import reward_fn

    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    policy = AutoModelForCausalLM.from_pretrained(tiny_path)
    policy.generation_config.update(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)  # the server then samples
    start = tmp_path / "start"
    policy.save_pretrained(start)
    tokenizer.save_pretrained(start)
    prompts = tiny_prompt_dataset()["prompt"][:4]
    server = LocalTransformersServer(None, tmp_path / "serve.log")  # serves the folder a request names
    try:
        output = tmp_path / "out"
        args = cpu_config(
            IterativeConfig, output, num_rounds=2, num_samples=3, max_new_tokens=8, sampling_batch_size=4,
            max_steps=2, learning_rate=2e-2, beta=0.1, generation_backend="server",
            generation_base_url=server.base_url, generation_model=str(start.resolve()),
            generation_prompt_format="text", generation_concurrency=4, policy_update="reload",
        )  # fmt: skip
        train_iterative(policy, prompts, args, reward=reward_fn, processing_class=tokenizer)
        round_0 = str((output / "round_0" / "model").resolve())
        identities = {
            json.loads(line)["generation"]["model"] for line in (output / "round_1" / "samples.jsonl").open()
        }
        (identity,) = identities
        assert identity.startswith(f"served:{round_0}:weights:")  # round 1 asked the server for round 0's checkpoint

        trained = AutoModelForCausalLM.from_pretrained(round_0).eval()
        sft = AutoModelForCausalLM.from_pretrained(tiny_path).eval()
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                 if isinstance(p, list) else p for p in prompts]  # fmt: skip
        served = [served_greedy(server, round_0, text, 8) for text in texts]
        assert served == [_local_greedy(trained, tokenizer, text, 8) for text in texts]
        assert served != [_local_greedy(sft, tokenizer, text, 8) for text in texts]  # the weights are told apart
        history = read_rounds(output)
        assert [r["round"] for r in history] == [0, 1] and "time/policy_update" in history[1]
    finally:
        server.close()
