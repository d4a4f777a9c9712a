"""Online rounds on a served policy (`policy_update`): the server is updated to each round's weights and the update is
verified before the round samples. SGLang's reload from disk and vLLM's runtime LoRA against a stub that records the
calls; `transformers serve` (reload by path) end to end in `test_online_real.py`."""

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from conftest import cpu_config
from stub_completions import sample_text
from stub_server import Fault, StubServer

from trl_rankalign.online import PolicyUpdateError, ServedPolicy


class AdminStub(StubServer):
    """Completions (echoing the requested model) plus SGLang's `/update_weights_from_disk` and `/get_model_info` and
    vLLM's `/v1/load_lora_adapter` and `/v1/models`. `lie` makes it report another model than the one loaded."""

    def __init__(self, lie: bool = False):
        self.model_path, self.adapters, self.lie = "start", [], lie
        super().__init__(self._answer)
        stub, base = self, self.server.RequestHandlerClass

        class Handler(base):
            def do_GET(self):
                stub._record({"method": "GET", "path": self.path})
                if self.path == "/get_model_info":
                    body = {"model_path": "elsewhere" if stub.lie else stub.model_path}
                elif self.path == "/v1/models":
                    body = {"data": [{"id": name} for name in ["base", *stub.adapters]]}
                else:
                    return BaseHTTPRequestHandler.send_error(self, 404)
                payload = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server.RequestHandlerClass = Handler

    def _answer(self, request: dict):
        if "model_path" in request:  # SGLang
            self.model_path = request["model_path"]
            return 200, {"success": True, "message": "Succeeded to update model weights."}
        if "lora_name" in request:  # vLLM: a plain-text success, not JSON
            self.adapters.append(request["lora_name"])
            return Fault("raw", body=f"Success: LoRA adapter '{request['lora_name']}' added successfully.".encode())
        n = request.get("n", 1)
        choices = [{"index": i, "text": sample_text(request["prompt"], request.get("seed"), i)} for i in range(n)]
        return 200, {"model": "other" if self.lie else request.get("model"), "choices": choices}

    def posts(self, key: str) -> list[dict]:
        return [r for r in self.requests if key in r]


@pytest.fixture
def admin_stub():
    stub = AdminStub()
    yield stub
    stub.close()


def test_sglang_reload_is_requested_and_verified(admin_stub, tmp_path):
    served = ServedPolicy("sglang", admin_stub.base_url, "policy")
    assert served.update(0, None, "weights:abc") == "policy"  # round 0 samples the starting policy as served
    assert admin_stub.requests == []
    checkpoint = tmp_path / "round_0" / "model"
    assert served.update(1, checkpoint, "weights:abc") == "policy"
    assert admin_stub.posts("model_path") == [{"path": "/update_weights_from_disk", "auth": None,
                                               "model_path": str(checkpoint.resolve())}]  # fmt: skip
    assert {"method": "GET", "path": "/get_model_info"} in admin_stub.requests


def test_lora_adapter_gets_a_new_name_per_round_and_is_verified(admin_stub, tmp_path):
    served = ServedPolicy("lora", admin_stub.base_url, "org/policy")
    first = served.update(1, tmp_path / "round_0" / "model", "weights:0123456789abcdef")
    second = served.update(2, tmp_path / "round_1" / "model", "weights:fedcba9876543210")
    assert first == "policy-round1-0123456789ab" and second == "policy-round2-fedcba987654"
    loads = admin_stub.posts("lora_name")
    assert [(r["path"], r["lora_name"]) for r in loads] == [("/v1/load_lora_adapter", first),
                                                            ("/v1/load_lora_adapter", second)]  # fmt: skip
    assert loads[1]["lora_path"] == str((tmp_path / "round_1" / "model").resolve())
    probes = [r for r in admin_stub.posts("prompt")]
    assert [r["model"] for r in probes] == [first, second] and all(r["max_tokens"] == 1 for r in probes)


@pytest.mark.parametrize("mode", ["sglang", "lora", "reload"])
def test_a_server_reporting_another_model_stops_the_run(tmp_path, mode):
    stub = AdminStub(lie=True)
    try:
        with pytest.raises(PolicyUpdateError, match="Round 1"):
            ServedPolicy(mode, stub.base_url, "policy").update(1, tmp_path / "m", "weights:0")
    finally:
        stub.close()


def test_iterate_follows_the_rounds_on_a_served_policy(admin_stub, tiny_path, tmp_path):
    """Two `iterate` rounds with the server backend: before round 1 samples, the server reloads round 0's checkpoint
    (verified); round 1's samples are keyed on round 0's weights."""
    from trl_rankalign.iterative import IterativeConfig, train_iterative
    from trl_rankalign.online import read_rounds
    from trl_rankalign.tiny import tiny_prompt_dataset
    from trl_rankalign.tiny.language import reward_fn

    args = cpu_config(
        IterativeConfig, tmp_path, num_rounds=2, num_samples=4, max_new_tokens=8, sampling_batch_size=4, max_steps=1,
        generation_backend="server", generation_base_url=admin_stub.base_url, generation_model="policy",
        policy_update="sglang",
    )  # fmt: skip
    train_iterative(tiny_path, tiny_prompt_dataset()["prompt"][:4], args, reward=reward_fn)
    paths = [r.get("path") for r in admin_stub.requests]
    update = paths.index("/update_weights_from_disk")
    samples = [i for i, p in enumerate(paths) if p == "/v1/completions"]
    assert len(samples) == 8 and samples[3] < update < samples[4]  # 4 prompts per round, the update in between
    assert admin_stub.model_path == str((tmp_path / "round_0" / "model").resolve())
    identities = [
        {json.loads(line)["generation"]["model"] for line in (tmp_path / f"round_{r}" / "samples.jsonl").open()}
        for r in range(2)
    ]
    assert all(len(i) == 1 for i in identities) and identities[0] != identities[1]
    assert all(next(iter(i)).startswith("served:policy:weights:") for i in identities)
    history = read_rounds(tmp_path)
    assert history[1]["time/policy_update"] >= 0 and history[1]["kl_to_sft_source"] == "text"
    assert Path(tmp_path / "config.json").is_file()


def test_raft_follows_the_rounds_by_reloading_the_checkpoint_by_path(admin_stub, tiny_path, tmp_path):
    """RAFT through the same runner: round 1 asks the server for round 0's checkpoint by its path (after a probe
    whose reply names it)."""
    from trl_rankalign.raft import RAFTConfig, train_raft
    from trl_rankalign.tiny.language import reward_fn

    args = cpu_config(
        RAFTConfig, tmp_path, num_rounds=2, num_samples=2, max_new_tokens=6, sampling_batch_size=2, max_steps=1,
        generation_backend="server", generation_base_url=admin_stub.base_url, generation_model="policy",
        policy_update="reload",
    )  # fmt: skip
    train_raft(tiny_path, ["Review of the pasta:", "Review of the hotel room:"], args, reward=reward_fn)
    round_0 = str((tmp_path / "round_0" / "model").resolve())
    models = [r["model"] for r in admin_stub.posts("prompt")]
    assert models == ["policy", "policy", round_0, round_0, round_0]  # round 0; the probe; round 1
    assert admin_stub.posts("prompt")[2]["max_tokens"] == 1


# ------------------------------------------------------------------------------------------------------ nccl
class LogprobServer(StubServer):
    """A served policy whose completions with `echo` and `logprobs` answer the prompt tokens' log-probs computed by
    `self.model` (what a vLLM server reports); the weight sync below copies weights into it as NCCL would."""

    def __init__(self, model):
        self.model = model
        super().__init__(self._answer)

    def _answer(self, request: dict):
        from trl_rankalign.online.served import local_logprobs

        assert request["echo"] is True and request["logprobs"] == 0
        values = [None, *local_logprobs(self.model, request["prompt"]).float().tolist()]
        return 200, {"model": request["model"], "choices": [{"text": "x", "logprobs": {"token_logprobs": values}}]}


class CopyingSync:
    """Stands in for TRL's `VLLMGeneration` (which needs CUDA and vLLM): `sync_weights` copies `self.model`'s weights
    into the served model, or, when `broken`, does nothing (a push that never arrived)."""

    def __init__(self, served_model, broken: bool = False):
        self.served_model, self.broken, self.model, self.synced = served_model, broken, None, []

    def __call__(self, policy):
        self.built_with = policy
        return self

    def sync_weights(self):
        self.synced.append(self.model)
        if not self.broken:
            self.served_model.load_state_dict(self.model.state_dict())


def _moved(model, scale: float = 0.5):
    """A copy of `model` with every weight moved (a round's training)."""
    import copy

    import torch

    moved = copy.deepcopy(model)
    with torch.no_grad():
        for generator, parameter in zip(range(10**6), moved.parameters()):
            parameter.add_(scale * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(generator)))
    return moved


@pytest.mark.parametrize("broken", [False, True])
def test_nccl_push_is_verified_by_the_served_logprobs(tiny_path, broken):
    """The round's weights are pushed by the weight sync (built once, pointed at each round's policy) and checked
    against the server's log-probs of the probe; a push that left the old weights stops the run."""
    import copy

    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = AutoModelForCausalLM.from_pretrained(tiny_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    server = LogprobServer(copy.deepcopy(start))
    sync = CopyingSync(server.model, broken=broken)
    try:
        served = ServedPolicy("nccl", server.base_url, "policy", processing_class=tokenizer, weight_sync=sync)
        assert served.update(0, None, "weights:0", policy=start) == "policy" and sync.synced == []
        rounds = [_moved(start), _moved(_moved(start))]
        if broken:
            with pytest.raises(PolicyUpdateError, match=r"Round 1: after the NCCL weight push .* nats per token"):
                served.update(1, "unused", "weights:1", policy=rounds[0])
            return
        rounds[0].train()  # a policy fresh from its trainer: its mode is left as it was
        for index, policy in enumerate(rounds, start=1):
            assert served.update(index, "unused", f"weights:{index}", policy=policy) == "policy"
        assert rounds[0].training and not rounds[1].training
        assert sync.built_with is rounds[0] and sync.synced == rounds  # built once, each round's policy pushed
        assert all(r["model"] == "policy" for r in server.requests)
    finally:
        server.close()


def test_nccl_needs_the_tokenizer_the_policy_and_prompt_logprobs(tiny_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with pytest.raises(ValueError, match="processing_class"):
        ServedPolicy("nccl", "http://127.0.0.1:1/v1", "policy")
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    served = ServedPolicy("nccl", "http://127.0.0.1:1/v1", "policy", processing_class=tokenizer)
    with pytest.raises(ValueError, match="pass the policy"):
        served.update(1, "unused", "weights:1")
    no_logprobs = StubServer(lambda request: (200, {"model": "policy", "choices": [{"text": "x"}]}))
    try:
        served = ServedPolicy("nccl", no_logprobs.base_url, "policy", processing_class=tokenizer)
        with pytest.raises(PolicyUpdateError, match="no prompt log-probs"):
            served.update(1, "unused", "weights:1", policy=AutoModelForCausalLM.from_pretrained(tiny_path))
    finally:
        no_logprobs.close()


def test_trl_weight_sync_contract():
    """The NCCL path builds TRL's `VLLMGeneration(model, accelerator, processing_class, mode="server",
    server_base_url=...)`, calls `sync_weights()`, and points its public `model` at each round's policy: this fails
    when TRL changes any of that."""
    import inspect

    from trl.generation.vllm_generation import VLLMGeneration

    parameters = inspect.signature(VLLMGeneration.__init__).parameters
    assert list(parameters)[1:4] == ["model", "accelerator", "processing_class"]
    assert parameters["mode"].default == "colocate" and "server_base_url" in parameters
    assert callable(VLLMGeneration.sync_weights) and not inspect.signature(
        VLLMGeneration.sync_weights
    ).parameters.keys() - {"self"}
    source = inspect.getsource(VLLMGeneration)
    assert "self.model = model" in source and "model = self.model" in source  # the model it syncs is read each time
