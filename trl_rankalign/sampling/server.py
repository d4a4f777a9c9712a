"""The `server` generation backend: any OpenAI-compatible `/v1/completions` or `/v1/chat/completions` endpoint
(`vllm serve`, SGLang, TGI, `transformers serve`; OpenAI's and TGI's Messages API offer only the chat one).

This is how generation spreads over many GPUs or nodes: run `vllm serve` with data parallelism, or several servers
behind one URL, and point `base_url` at it. Each prompt is one request asking for its `n` samples (the server prefills
it once and forks its cache), requests run `concurrency` at a time, transient failures are retried with backoff, and a
rate limit spaces them ([`trl_rankalign.sampling.http.Endpoint`]: no redirects followed, no secret in error messages).
A server that returns fewer choices than `n` (`transformers serve` ignores `n`; some servers cap it) is asked again,
concurrently and with distinct seeds, for the rest; a server that gives the same text for every sample of every prompt
under a temperature > 0 decodes greedily whatever it is asked (`transformers serve` samples only when the served
folder's `generation_config.json` sets `do_sample: true`), and the backend says so in one warning.

`endpoint` picks the route: `"completions"` (default) continues the prompt rendered locally (below), `"chat"` sends the
prompt as chat messages (a string prompt as one user message) and the server applies its own chat template, `"auto"`
sends chat prompts to the chat route and string prompts to the completions route.

Prompts are rendered locally with the policy's own chat template and sent as token ids (`prompt_format="tokens"`,
accepted by vLLM and SGLang), so the server continues exactly the tokens the trainers see; `prompt_format="text"`
sends the rendered text instead, for servers that take only strings (the server then tokenizes it, possibly adding a
BOS token). Each request carries a seed derived from the call's seed and the prompt's position, so a server that
honours seeds (vLLM does) gives the same samples for the same call.
"""

import hashlib
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm

from .http import Endpoint, EndpointError, is_refusal


__all__ = ["GenerationServerError", "ServerBackend", "request_seed"]

PROMPT_FORMATS = ("tokens", "text")
ENDPOINTS = ("completions", "chat", "auto")
SHOWN_CHARS = 300  # of an unexpected reply, in error messages

logger = logging.getLogger(__name__)


class GenerationServerError(EndpointError):
    """The generation server could not be reached, kept failing, refused a request, or answered with something that is
    not `n` completions."""


def request_seed(seed: int, position: int, attempt: int = 0) -> int:
    """The seed of request `attempt` (0: the first) for the prompt at `position` in a call seeded `seed` (31 bits,
    decorrelated): the follow-up requests of a server that returned fewer than `n` choices draw other samples."""
    key = f"{seed}:{position}" if attempt == 0 else f"{seed}:{position}:{attempt}"
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _is_chat(prompt) -> bool:
    return isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt)


class ServerBackend:
    """
    Sample from an OpenAI-compatible `/v1/completions` or `/v1/chat/completions` endpoint, n samples per prompt.

    Args:
        base_url: e.g. `"http://localhost:8000/v1"` (`/completions` or `/chat/completions` is appended). Credentials in
            the URL are refused.
        served_model: the served model's name (the `model` field of each request; `vllm serve PATH` serves it as
            `PATH` unless `--served-model-name` says otherwise). It is the policy's identity in cache keys.
        api_key_env: name of the environment variable holding the key (`None` or unset: no key is sent).
        concurrency: requests in flight at once.
        max_retries, timeout, backoff, max_backoff: per request (see [`trl_rankalign.sampling.http.Endpoint`]).
        requests_per_second: rate limit (`None`: unlimited).
        prompt_format: completions route: `"tokens"` (token ids, exact; vLLM, SGLang) or `"text"` (`transformers serve`
            and TGI take only strings).
        endpoint: `"completions"`, `"chat"` or `"auto"` (chat prompts to the chat route, strings to completions).
    """

    name = "server"
    # sent as vLLM/SGLang's `min_tokens` and `repetition_penalty` extensions when set (a server without them refuses)
    supported_decoding = frozenset({"min_new_tokens", "repetition_penalty"})

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
        endpoint: str = "completions",
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
        if endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {ENDPOINTS}, got {endpoint!r}.")
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
        self.route = endpoint
        self.warned_greedy = False  # one warning per backend, not one per batch

    def identity(self, model) -> str:
        # the chat route renders with the server's template, and a text prompt is tokenized by the server (BOS,
        # merges): either gives other completions than the local token ids, so both are part of the identity
        route = "" if self.route == "completions" else f":{self.route}"
        text = self.prompt_format == "text" and self.route != "chat"  # the chat route sends messages either way
        return f"served:{self.served_model}{route}" + (":text" if text else "")

    def _payload(self, prompt, chat: bool, num_samples: int, decoding, seed: int) -> dict:
        payload = {"model": self.served_model, "messages" if chat else "prompt": prompt, "n": num_samples}
        payload.update(max_tokens=decoding.max_new_tokens, temperature=decoding.temperature, top_p=decoding.top_p)
        payload["seed"] = seed
        if decoding.top_k > 0:
            payload["top_k"] = decoding.top_k  # an extension of vLLM, SGLang and TGI (not OpenAI's API)
        if decoding.min_new_tokens:
            payload["min_tokens"] = decoding.min_new_tokens  # vLLM, SGLang
        if decoding.repetition_penalty != 1.0:
            payload["repetition_penalty"] = decoding.repetition_penalty  # vLLM, SGLang, TGI
        return payload

    def _request(self, prompt, chat: bool, num_samples: int, decoding, seed: int) -> list[str]:
        """Between 1 and `num_samples` completions from one request (a server may return fewer choices than asked)."""
        path = "/chat/completions" if chat else "/completions"
        try:
            data = self.endpoint.post(path, self._payload(prompt, chat, num_samples, decoding, seed))
        except EndpointError as error:
            if chat or self.prompt_format != "tokens" or not is_refusal(error):
                raise
            # the commonest refusal at first contact: servers that take text prompts only (transformers serve, TGI)
            hinted = GenerationServerError(
                f"{error} (the prompt went as token ids, generation_prompt_format=tokens: if this server takes text "
                "prompts only, as transformers serve does, set generation_prompt_format=text)"
            )
            hinted.status = error.status
            raise hinted from error
        choices = data.get("choices") if isinstance(data, dict) else None

        def text(choice):
            if not isinstance(choice, dict):
                return None
            if chat:
                message = choice.get("message")
                content = message.get("content") if isinstance(message, dict) else None
                return "" if isinstance(message, dict) and content is None else content  # a reply cut at 0 tokens
            return choice.get("text")

        texts = None
        if isinstance(choices, list) and all(isinstance(text(c), str) for c in choices):
            texts = [text(c) for c in sorted(choices, key=lambda c: c.get("index", 0))]
        if not texts or len(texts) > num_samples:
            shown = self.endpoint.redact(str(data))[:SHOWN_CHARS]  # masked first, then cut: no half key survives
            raise GenerationServerError(
                f"Generation server {self.endpoint.display_url}{path} answered with something that is not "
                f"{num_samples} completions (nor fewer, to ask again for the rest): {shown}"
            )
        return texts

    def generate(self, model, tokenizer, texts, num_samples, decoding, progress=False, desc="Sampling", prompts=None):
        """`num_samples` completions per prompt. `texts` are the prompts rendered with the policy's chat template;
        `prompts` (from [`sample_completions`]) the prompts themselves, which the chat route sends as messages."""
        prompts = list(prompts) if prompts is not None else list(texts)
        chat = [self.route == "chat" or (self.route == "auto" and _is_chat(p)) for p in prompts]
        payloads = []
        for text, prompt, to_chat in zip(texts, prompts, chat):
            if to_chat:
                payloads.append(prompt if _is_chat(prompt) else [{"role": "user", "content": prompt}])
            elif self.prompt_format == "tokens":
                payloads.append(tokenizer(text, add_special_tokens=False)["input_ids"])
            else:
                payloads.append(text)
        draws = num_samples if decoding.do_sample else 1  # greedy: one request sample, n copies
        got: list[dict[int, list[str]]] = [{} for _ in payloads]  # per prompt: {attempt: that request's texts}
        missing = [draws] * len(payloads)
        attempts = [0] * len(payloads)  # requests sent per prompt; attempt a is seeded request_seed(seed, i, a)
        cap = draws  # the most choices the server returned for one request so far
        bar = tqdm(total=len(payloads), desc=desc, unit="prompt", disable=not progress)
        try:
            with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(payloads) * draws))) as pool:
                while any(missing):
                    # round 1 asks for all n per prompt; later rounds ask for the rest, in requests of the size the
                    # server answered, concurrently, each with its own seed (the server may ignore `n`, not the seed)
                    futures = {}
                    for i, need in enumerate(missing):
                        for k in range(math.ceil(need / cap)):
                            size = min(cap, need - k * cap)
                            seed = request_seed(decoding.seed, i, attempts[i])
                            future = pool.submit(self._request, payloads[i], chat[i], size, decoding, seed)
                            futures[future] = (i, attempts[i], size)
                            attempts[i] += 1
                    try:
                        for future in futures:  # in order; the pool keeps `concurrency` requests in flight
                            i, attempt, size = futures[future]
                            got[i][attempt] = reply = future.result()
                            if len(reply) < size:  # the server's own limit (>= 1: `_request` refuses none)
                                cap = min(cap, len(reply))
                            missing[i] -= len(reply)
                            if missing[i] == 0:
                                bar.update(1)
                    except BaseException:
                        for future in futures:
                            future.cancel()
                        raise
        finally:
            bar.close()
        results = []
        for samples in got:
            texts_i = [t for key in sorted(samples) for t in samples[key]][:draws]
            results.append(texts_i if draws == num_samples else texts_i * num_samples)
        self._warn_if_greedy(results, num_samples, decoding)
        return results

    def _warn_if_greedy(self, results: list[list[str]], num_samples: int, decoding) -> None:
        if self.warned_greedy or not decoding.do_sample or num_samples < 2:
            return
        if all(len(set(samples)) == 1 for samples in results):
            self.warned_greedy = True
            logger.warning(
                "Generation server %s (model %r) returned identical samples for every prompt at temperature=%s: it "
                "decodes greedily, whatever it is asked. `transformers serve` samples only when the served folder's "
                "generation_config.json sets `do_sample: true`; other servers may ignore `n` and the seed together.",
                self.endpoint.display_url,
                self.served_model,
                decoding.temperature,
            )
