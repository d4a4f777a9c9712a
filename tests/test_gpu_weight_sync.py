"""`iterate` on a vLLM server that follows the rounds over NCCL (`policy_update="nccl"`): `pytest -m gpu
tests/test_gpu_weight_sync.py` on a machine with CUDA and vLLM (excluded by default; skipped without either).

The server is `VLLM_SERVER_DEV_MODE=1 vllm serve <tiny> --weight-transfer-config '{"backend": "nccl"}'` on 127.0.0.1;
TRL's `VLLMGeneration` pushes round 0's weights before round 1 samples, and the run verifies them by the served
log-probs. The proof checked here: after the run, the server's log-probs of a text equal those of round 1's starting
weights (round 0's saved model) computed locally, and differ from the SFT's."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
from conftest import cpu_config


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

START_TIMEOUT_S = 300


@pytest.fixture
def vllm_server(tiny_path, tmp_path):
    pytest.importorskip("vllm")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    executable = shutil.which("vllm", path=os.path.dirname(sys.executable)) or "vllm"
    log = open(tmp_path / "vllm.log", "w")
    process = subprocess.Popen(
        [executable, "serve", tiny_path, "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "policy",
         "--weight-transfer-config", '{"backend": "nccl"}', "--gpu-memory-utilization", "0.3", "--enforce-eager"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_SERVER_DEV_MODE": "1", "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"vllm serve did not start; see {tmp_path / 'vllm.log'}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def test_iterate_rounds_follow_the_trained_weights_over_nccl(vllm_server, tiny_path, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_rankalign.iterative import IterativeConfig, train_iterative
    from trl_rankalign.online import ServedPolicy, read_rounds
    from trl_rankalign.online.served import PROBE_TEXT, local_logprobs
    from trl_rankalign.tiny import tiny_prompt_dataset
    from trl_rankalign.tiny.language import reward_fn

    args = cpu_config(
        IterativeConfig, tmp_path / "run", num_rounds=2, num_samples=4, max_new_tokens=8, sampling_batch_size=4,
        max_steps=2, learning_rate=1e-2, use_cpu=False, generation_backend="server", generation_base_url=vllm_server,
        generation_model="policy", policy_update="nccl",
    )  # fmt: skip
    train_iterative(tiny_path, tiny_prompt_dataset()["prompt"][:4], args, reward=reward_fn)
    history = read_rounds(tmp_path / "run")
    assert len(history) == 2 and history[1]["time/policy_update"] > 0

    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    probe = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    served = ServedPolicy("nccl", vllm_server, "policy", processing_class=tokenizer).served_logprobs(probe)
    round_0 = local_logprobs(AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "round_0" / "model"), probe)
    sft = local_logprobs(AutoModelForCausalLM.from_pretrained(tiny_path), probe)
    assert (served - round_0).abs().mean() < 0.05 < (served - sft).abs().mean()
