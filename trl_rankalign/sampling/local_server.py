"""`transformers serve` on this machine: a real OpenAI-compatible server for the `server` generation backend, the LLM
judge and served online rounds, without another machine or a GPU.

[`LocalTransformersServer`] starts `transformers serve` (transformers' `serving` extra) on 127.0.0.1 and a free port,
offline, waits for `/health`, and stops it on `close()` or at the end of a `with` block. Serving a folder pins that
model; serving none lets each request name a local folder by its path (what `policy_update="reload"` asks for).
Two behaviours of `transformers serve` the callers must know: it returns one choice per request whatever `n` says (the
backend asks again), and it decodes greedily unless the served folder's `generation_config.json` sets
`do_sample: true`.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


__all__ = ["LocalTransformersServer"]


class LocalTransformersServer:
    """
    Args:
        model: the folder to serve, or `None` to serve whichever local folder a request's `model` names.
        log_path: the server's stdout and stderr go here.
        threads: the server's torch threads (`OMP_NUM_THREADS`). One by default: the server shares the CPU with the
            process calling it; oversubscribed on 2 cores, a 10-token reply took 15-25 s instead of 1-2 s.
        start_timeout: seconds to wait for `/health` before giving up (the log's path is in the error).

    Attributes:
        base_url: `http://127.0.0.1:<port>/v1`, what `generation_base_url` and the judge's base URL take.
        model: the name to send (the served folder as given), or `None`.
    """

    def __init__(self, model: str | None, log_path: str | os.PathLike, threads: int = 1, start_timeout: float = 120.0):
        self.model = model
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        executable = shutil.which("transformers", path=os.path.dirname(sys.executable)) or "transformers"
        command = [executable, "serve", *([model] if model else []), "--host", "127.0.0.1", "--port", str(self.port),
                   "--device", "cpu"]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads)}
        self.log_path = Path(log_path)
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.close()
                raise RuntimeError(f"transformers serve exited ({self.process.returncode}); see {self.log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.close()
        raise RuntimeError(f"transformers serve did not answer /health in {start_timeout:.0f} s; see {self.log_path}")

    def close(self) -> None:
        """Stop the server (terminate, then kill after 20 s) and close its log."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def __enter__(self) -> "LocalTransformersServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
