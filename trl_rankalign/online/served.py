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

- `"nccl"`: full weights pushed over NCCL by TRL's own weight sync, [`trl.generation.vllm_generation.VLLMGeneration`]
  in `mode="server"` (its `sync_weights`: PEFT adapters merged, FSDP/ZeRO-3 parameters gathered, prefix cache reset),
  to `VLLM_SERVER_DEV_MODE=1 vllm serve <model> --weight-transfer-config '{"backend": "nccl"}'` (TRL's own
  online trainers use the same). The served name stays; nothing is written to disk. Needs CUDA on the trainer's side
  and `vllm` installed there. Verified by log-probabilities: the server's log-probs of a fixed probe text (token ids,
  `echo`) must match the round's weights computed here to `LOGPROB_TOLERANCE` nats per token (mean absolute
  difference); a push that left the old weights fails unless the round moved the probe's log-probs by less than that.

The reload, sglang and lora folders must be readable by the server at the same path (same machine or a shared
filesystem).
"""

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..sampling.http import Endpoint, EndpointError


__all__ = ["PolicyUpdateError", "ServedPolicy"]

MODES = ("reload", "sglang", "lora", "nccl")
# "nccl": the served log-probs may differ from the local ones by bfloat16 noise, not by a training round's change
LOGPROB_TOLERANCE = 0.05
PROBE_TEXT = "The quick brown fox jumps over the lazy dog. Alignment learns from ranked answers, best to worst."


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
        processing_class: the policy's tokenizer (`"nccl"`: it tokenizes the probe the update is verified with).
        weight_sync: `"nccl"` only, `policy -> object with sync_weights()`: what pushes the weights (default: TRL's
            `VLLMGeneration` in server mode, built once on the first update and pointed at each round's policy).
    """

    def __init__(
        self,
        mode: str,
        base_url: str,
        served_model: str,
        api_key_env: str | None = None,
        timeout: float = 600.0,
        processing_class: Any = None,
        weight_sync: Callable[[Any], Any] | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"policy update mode must be one of {MODES}, got {mode!r}.")
        if mode == "nccl" and processing_class is None:
            raise ValueError(
                "policy_update='nccl' verifies the push by log-probs: pass the policy's processing_class."
            )
        self.mode, self.served_model = mode, served_model
        self.processing_class, self.weight_sync, self._sync = processing_class, weight_sync, None
        self.root_url = base_url.rstrip("/").removesuffix("/v1")
        base_url = base_url.rstrip("/")
        # The package's one HTTP client: whole-reply deadline, retries of transient faults, no redirects, keys masked.
        options = dict(api_key_env=api_key_env, timeout=timeout, error_class=PolicyUpdateError, what="Policy server")
        self.api = Endpoint(base_url, **options)  # OpenAI routes: /completions, /models, /load_lora_adapter
        self.admin = Endpoint(self.root_url, **options)  # SGLang's admin routes at the server's root

    @classmethod
    def from_args(cls, args: Any, processing_class: Any = None) -> "ServedPolicy | None":
        """The served policy of a config mixing in `RoundArguments`, or `None` when the policy samples here (or the
        server serves fixed weights: `policy_update="none"`)."""
        if args.generation_backend != "server" or args.policy_update == "none":
            return None
        return cls(
            args.policy_update,
            args.generation_base_url,
            args.generation_model,
            args.generation_api_key_env,
            processing_class=processing_class,
        )

    def _probe(self, name: str) -> str | None:
        """The `model` field of the reply to a one-token completion asking for `name`."""
        payload = {"model": name, "prompt": "Hello", "max_tokens": 1, "temperature": 0}
        return self.api.post("/completions", payload).get("model")

    # ------------------------------------------------------------------------------------------------- updates
    def update(
        self, round_index: int, checkpoint: str | os.PathLike | None, fingerprint: str, policy: Any = None
    ) -> str:
        """Point the server at the policy round `round_index` starts from and return the model name to request.

        `checkpoint` is the folder holding those weights (the previous round's saved model; `None` for round 0, which
        samples `served_model` as given), `fingerprint` their weights fingerprint (it names LoRA adapters), `policy`
        the same weights in memory (`"nccl"` pushes them from there).
        Raises [`PolicyUpdateError`] when the server refuses or reports anything else.
        """
        if checkpoint is None:
            return self.served_model
        if self.mode == "nccl":
            if policy is None:
                raise ValueError("policy_update='nccl' pushes the weights in memory: pass the policy to update().")
            return self._push(round_index, policy)
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
        self.api.post(
            "/load_lora_adapter", {"lora_name": name, "lora_path": path}, text_reply=True
        )  # vLLM: plain text
        listed = [m.get("id") for m in self.api.get("/models").get("data", []) if isinstance(m, dict)]
        if name not in listed:
            raise PolicyUpdateError(f"Round {round_index}: the server lists {listed} after loading adapter {name!r}.")
        reported = self._probe(name)
        if reported != name:
            raise PolicyUpdateError(
                f"Round {round_index}: asked for adapter {name!r}, the server answered as {reported!r}."
            )
        return name

    # ---------------------------------------------------------------------------------------------------- nccl
    def _push(self, round_index: int, policy: Any) -> str:
        """Push `policy`'s weights over NCCL with TRL's weight sync, then check the served log-probs match them."""
        probe = self.processing_class(PROBE_TEXT, add_special_tokens=False)["input_ids"]
        if self._sync is None:
            self.served_logprobs(probe)  # the check below needs prompt log-probs: fail before joining the NCCL group
            self._sync = (self.weight_sync or self._trl_weight_sync)(policy)
        # TRL's VLLMGeneration keeps the model it syncs in its public `model` attribute (its constructor argument);
        # each round trains a new policy object, so point it at this round's (our own object, not the user's).
        self._sync.model = policy
        self._sync.sync_weights()
        after, local = self.served_logprobs(probe), local_logprobs(policy, probe)
        distance = float((after - local).abs().mean())
        if distance > LOGPROB_TOLERANCE:
            raise PolicyUpdateError(
                f"Round {round_index}: after the NCCL weight push the server's log-probs of the probe differ from the "
                f"round's weights by {distance:.4f} nats per token (tolerance {LOGPROB_TOLERANCE}): the server does "
                "not serve the round's policy."
            )
        return self.served_model

    def _trl_weight_sync(self, policy: Any):
        """TRL's own server-mode weight sync: joins the server's NCCL group once (CUDA and vLLM needed here)."""
        from accelerate import Accelerator
        from trl.generation.vllm_generation import VLLMGeneration

        return VLLMGeneration(
            policy, Accelerator(), self.processing_class, mode="server", server_base_url=self.root_url
        )

    def served_logprobs(self, token_ids: list[int]) -> torch.Tensor:
        """`(T-1,)` the server's log-probs of tokens 1..T-1 of `token_ids`, each given the ones before (`echo`)."""
        payload = {"model": self.served_model, "prompt": token_ids, "max_tokens": 1, "temperature": 1.0,
                   "echo": True, "logprobs": 0}  # fmt: skip
        choice = self.api.post("/completions", payload)["choices"][0]
        values = (choice.get("logprobs") or {}).get("token_logprobs") or []
        if len(values) < len(token_ids) or any(v is None for v in values[1 : len(token_ids)]):
            raise PolicyUpdateError(
                "The server returned no prompt log-probs for the probe (completions with echo and logprobs): "
                "policy_update='nccl' verifies the push with them."
            )
        return torch.tensor(values[1 : len(token_ids)], dtype=torch.float64)


@torch.no_grad()
def local_logprobs(policy: Any, token_ids: list[int]) -> torch.Tensor:
    """`(T-1,)` `policy`'s log-probs of tokens 1..T-1 of `token_ids`, each given the ones before (float64)."""
    device = next(policy.parameters()).device
    input_ids = torch.tensor([token_ids], device=device)
    was_training = policy.training
    policy.eval()  # no dropout, as the server computes them; the policy's mode is restored below
    try:
        logits = policy(input_ids=input_ids).logits[0, :-1].double()  # (T-1, V)
    finally:
        policy.train(was_training)
    return logits.log_softmax(-1).gather(-1, input_ids[0, 1:, None]).squeeze(-1).cpu()
