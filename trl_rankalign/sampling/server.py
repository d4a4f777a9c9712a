"""The `server` generation backend: any OpenAI-compatible `/v1/completions` endpoint (`vllm serve`, SGLang, TGI).

This is how generation spreads over many GPUs or nodes: run `vllm serve` with data parallelism, or several servers
behind one URL, and point `base_url` at it. Each prompt is one request asking for its `n` samples (the server prefills
it once and forks its cache), requests run `concurrency` at a time, transient failures are retried with backoff, and a
rate limit spaces them ([`trl_rankalign.sampling.http.Endpoint`]: no redirects followed, no secret in error messages).

Prompts are rendered locally with the policy's own chat template and sent as token ids (`prompt_format="tokens"`,
accepted by vLLM and SGLang), so the server continues exactly the tokens the trainers see; `prompt_format="text"`
sends the rendered text instead, for servers that take only strings (the server then tokenizes it, possibly adding a
BOS token). Each request carries a seed derived from the call's seed and the prompt's position, so a server that
honours seeds (vLLM does) gives the same samples for the same call.
"""

import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm

from .http import Endpoint, EndpointError


__all__ = ["GenerationServerError", "ServerBackend", "request_seed"]

PROMPT_FORMATS = ("tokens", "text")


class GenerationServerError(EndpointError):
    """The generation server could not be reached, kept failing, refused a request, or answered with something that is
    not `n` completions."""


def request_seed(seed: int, position: int) -> int:
    """The seed of the request for the prompt at `position` in a call seeded `seed` (31 bits, decorrelated)."""
    digest = hashlib.sha256(f"{seed}:{position}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class ServerBackend:
    """
    Sample from an OpenAI-compatible `/v1/completions` endpoint, n samples per prompt in one request.

    Args:
        base_url: e.g. `"http://localhost:8000/v1"` (`/completions` is appended). Credentials in the URL are refused.
        served_model: the served model's name (the `model` field of each request; `vllm serve PATH` serves it as
            `PATH` unless `--served-model-name` says otherwise). It is the policy's identity in cache keys.
        api_key_env: name of the environment variable holding the key (`None` or unset: no key is sent).
        concurrency: requests in flight at once.
        max_retries, timeout, backoff, max_backoff: per request (see [`trl_rankalign.sampling.http.Endpoint`]).
        requests_per_second: rate limit (`None`: unlimited).
        prompt_format: `"tokens"` (token ids, exact) or `"text"`.
    """

    name = "server"

    def __init__(
        self,
        base_url: str | None = None,
        served_model: str | None = None,
        api_key_env: str | None = None,
        concurrency: int = 8,
        max_retries: int = 3,
        timeout: float = 600.0,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        requests_per_second: float | None = None,
        prompt_format: str = "tokens",
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not base_url:
            raise ValueError(
                "The server backend needs the endpoint's base URL (generation_base_url), e.g. http://localhost:8000/v1."
            )
        if not served_model:
            raise ValueError("The server backend needs the served model's name (generation_model).")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}.")
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}.")
        self.endpoint = Endpoint(
            base_url,
            api_key_env=api_key_env,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            max_backoff=max_backoff,
            requests_per_second=requests_per_second,
            error_class=GenerationServerError,
            what="Generation server",
            sleep=sleep,
        )
        self.served_model = served_model
        self.concurrency = concurrency
        self.prompt_format = prompt_format

    def identity(self, model) -> str:
        return f"served:{self.served_model}"

    def _request(self, prompt, num_samples: int, decoding, seed: int) -> list[str]:
        payload = {
            "model": self.served_model,
            "prompt": prompt,
            "n": num_samples,
            "max_tokens": decoding.max_new_tokens,
            "temperature": decoding.temperature,
            "top_p": decoding.top_p,
            "seed": seed,
        }
        if decoding.top_k > 0:
            payload["top_k"] = decoding.top_k  # an extension of vLLM, SGLang and TGI (not OpenAI's API)
        data = self.endpoint.post("/completions", payload)
        choices = data.get("choices") if isinstance(data, dict) else None
        texts = None
        if isinstance(choices, list) and all(isinstance(c, dict) and isinstance(c.get("text"), str) for c in choices):
            texts = [c["text"] for c in sorted(choices, key=lambda c: c.get("index", 0))]
        if texts is None or len(texts) != num_samples:
            shown = str(data)[:300]
            raise GenerationServerError(
                self.endpoint.redact(
                    f"Generation server {self.endpoint.display_url}/completions answered with something that is not "
                    f"{num_samples} completions: {shown}"
                )
            )
        return texts

    def generate(self, model, tokenizer, texts, num_samples, decoding, progress=False, desc="Sampling"):
        if self.prompt_format == "tokens":
            prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
        else:
            prompts = list(texts)
        draws = num_samples if decoding.do_sample else 1  # greedy: one request sample, n copies
        results: list[list[str] | None] = [None] * len(prompts)
        bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not progress)
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            futures = {
                pool.submit(self._request, prompt, draws, decoding, request_seed(decoding.seed, i)): i
                for i, prompt in enumerate(prompts)
            }
            try:
                for future in futures:  # in order; the pool keeps `concurrency` requests in flight meanwhile
                    texts_i = future.result()
                    results[futures[future]] = texts_i if draws == num_samples else texts_i * num_samples
                    bar.update(1)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
            finally:
                bar.close()
        return results
