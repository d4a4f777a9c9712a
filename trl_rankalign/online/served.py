"""A served policy that follows the rounds: [`ServedPolicy`] updates an OpenAI-compatible server to the weights a round
starts from, and verifies the update against what the server reports before anything is sampled.

Ways (the `policy_update` option of RAFT and `iterate`, with `generation_backend=server`):

- `"reload"`: servers that load the model a request names (`transformers serve` started without a pinned model): the
  round's checkpoint folder is requested by its absolute path. Verified by a one-token probe whose reply's `model`
  field must name that path.
- `"sglang"`: `POST /update_weights_from_disk {"model_path": ...}` (SGLang reloads the weights in place; requests keep
  the served name). Verified by the reply's `success` and by `GET /get_model_info`, whose `model_path` must be the
  round's checkpoint.
- `"lora"`: vLLM's runtime LoRA (`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`): `POST /v1/load_lora_adapter` with the
  round's adapter folder under a new name per round (`<served>-round<k>-<fingerprint>`); sampling then asks for that
  name. Verified by `GET /v1/models` listing the name and by a probe whose reply's `model` names it.

The folder must be readable by the server at the same path (same machine or a shared filesystem). Full-weight sync over
NCCL (TRL's `trl.generation.vllm_generation` with `vllm_mode="server"`) is not offered here: it needs GPUs on both sides.
"""

import os
from pathlib import Path
from typing import Any

from ..sampling.http import Endpoint, EndpointError


__all__ = ["PolicyUpdateError", "ServedPolicy"]

MODES = ("reload", "sglang", "lora")


class PolicyUpdateError(EndpointError):
    """The server refused the update, or reports another model than the one the round must sample from."""


class ServedPolicy:
    """
    Args:
        mode: `"reload"`, `"sglang"` or `"lora"` (see the module docstring).
        base_url: the OpenAI-compatible base URL (`http://host:port/v1`); SGLang's admin routes are at its root.
        served_model: the name round 0 samples (the starting policy as served).
        api_key_env: environment variable holding the API key (sent as a bearer token to this host only).
        timeout: seconds per request (a reload includes loading the weights).
    """

    def __init__(
        self,
        mode: str,
        base_url: str,
        served_model: str,
        api_key_env: str | None = None,
        timeout: float = 600.0,
    ):
        if mode not in MODES:
            raise ValueError(f"policy update mode must be one of {MODES}, got {mode!r}.")
        self.mode, self.served_model = mode, served_model
        base_url = base_url.rstrip("/")
        root_url = base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url
        # The package's one HTTP client: whole-reply deadline, retries of transient faults, no redirects, keys masked.
        options = dict(api_key_env=api_key_env, timeout=timeout, error_class=PolicyUpdateError, what="Policy server")
        self.api = Endpoint(base_url, **options)  # OpenAI routes: /completions, /models, /load_lora_adapter
        self.admin = Endpoint(root_url, **options)  # SGLang's admin routes at the server's root

    @classmethod
    def from_args(cls, args: Any) -> "ServedPolicy | None":
        """The served policy of a config mixing in `RoundArguments`, or `None` when the policy samples here (or the
        server serves fixed weights: `policy_update="none"`)."""
        if args.generation_backend != "server" or args.policy_update == "none":
            return None
        return cls(args.policy_update, args.generation_base_url, args.generation_model, args.generation_api_key_env)

    def _probe(self, name: str) -> str | None:
        """The `model` field of the reply to a one-token completion asking for `name`."""
        payload = {"model": name, "prompt": "Hello", "max_tokens": 1, "temperature": 0}
        return self.api.post("/completions", payload).get("model")

    # ------------------------------------------------------------------------------------------------- updates
    def update(self, round_index: int, checkpoint: str | os.PathLike | None, fingerprint: str) -> str:
        """Point the server at the policy round `round_index` starts from and return the model name to request.

        `checkpoint` is the folder holding those weights (the previous round's saved model; `None` for round 0, which
        samples `served_model` as given), `fingerprint` their weights fingerprint (it names LoRA adapters).
        Raises [`PolicyUpdateError`] when the server refuses or reports anything else.
        """
        if checkpoint is None:
            return self.served_model
        path = str(Path(checkpoint).resolve())
        if self.mode == "reload":
            reported = self._probe(path)
            if reported != path:
                raise PolicyUpdateError(
                    f"Round {round_index}: asked the server for the checkpoint {path}, it answered as {reported!r}: it "
                    "does not load the model a request names (start `transformers serve` without a model argument)."
                )
            return path
        if self.mode == "sglang":
            reply = self.admin.post("/update_weights_from_disk", {"model_path": path})
            if reply.get("success") is not True:
                raise PolicyUpdateError(f"Round {round_index}: SGLang refused /update_weights_from_disk: {reply}")
            info = self.admin.get("/get_model_info")
            if info.get("model_path") != path:
                raise PolicyUpdateError(
                    f"Round {round_index}: SGLang reports model_path {info.get('model_path')!r} after loading {path}."
                )
            return self.served_model
        name = f"{self.served_model.rstrip('/').split('/')[-1]}-round{round_index}-{fingerprint.split(':')[-1][:12]}"
        self.api.post("/load_lora_adapter", {"lora_name": name, "lora_path": path})
        listed = [m.get("id") for m in self.api.get("/models").get("data", []) if isinstance(m, dict)]
        if name not in listed:
            raise PolicyUpdateError(f"Round {round_index}: the server lists {listed} after loading adapter {name!r}.")
        reported = self._probe(name)
        if reported != name:
            raise PolicyUpdateError(
                f"Round {round_index}: asked for adapter {name!r}, the server answered as {reported!r}."
            )
        return name
