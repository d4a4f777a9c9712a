"""A small client for an OpenAI-compatible chat endpoint, and parsers for what a judge answers.

[`JudgeClient.chat`] sends `POST {base_url}/chat/completions` and returns the reply's text, with a timeout per request,
retries with exponential backoff on transient failures (timeouts, connection errors, HTTP 408/409/429/5xx, honouring
`Retry-After`) and a shared rate limit in requests per second. It knows nothing about verdicts: the parsers below turn
the text into a pairwise verdict ([`parse_pairwise_verdict`]), a 1-5 rating ([`parse_rating`]) or per-aspect ratings
([`parse_aspect_ratings`]), raising [`VerdictParseError`] on anything else, so callers count garbage as an error,
never as a result. Only the standard library is used (`urllib.request`).
"""

import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable


__all__ = [
    "DEFAULT_JUDGE_SYSTEM_PROMPT",
    "DEFAULT_PAIRWISE_TEMPLATE",
    "JudgeClient",
    "JudgeError",
    "JudgeRequestError",
    "RateLimiter",
    "VerdictParseError",
    "parse_aspect_ratings",
    "parse_pairwise_verdict",
    "parse_rating",
]

# The pairwise prompt of the win rate and of `rank`'s pairwise mode (MT-Bench's judge prompt, shortened)
DEFAULT_JUDGE_SYSTEM_PROMPT = (
    "You are a fair and careful judge of AI assistants. Compare two answers to the same user question and decide "
    "which one is better: more helpful, relevant, accurate, detailed where it matters, and harmless. The order in "
    "which the answers appear and their length must not influence you, and neither must the assistants' names. "
    "Explain your reasoning briefly, then give your final verdict on the last line in exactly this format: "
    '"[[A]]" if assistant A is better, "[[B]]" if assistant B is better, "[[C]]" for a tie.'
)

DEFAULT_PAIRWISE_TEMPLATE = (
    "[User Question]\n{question}\n\n"
    "[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
)

_RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


class JudgeError(RuntimeError):
    """Base class of the judge's errors."""


class JudgeRequestError(JudgeError):
    """The endpoint could not be reached or kept failing after every retry, or answered with a non-retryable error
    or a body that is not a chat completion."""


class VerdictParseError(JudgeError, ValueError):
    """The judge's text holds no (or an ambiguous) verdict. Counted as an error by callers, never as a result."""


class RateLimiter:
    """At most `requests_per_second` calls to [`acquire`] start per second, across threads (`None`: unlimited)."""

    def __init__(
        self,
        requests_per_second: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if requests_per_second is not None and requests_per_second <= 0:
            raise ValueError(f"requests_per_second must be positive, got {requests_per_second}.")
        self.interval = 0.0 if requests_per_second is None else 1.0 / requests_per_second
        self._clock, self._sleep = clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if self.interval == 0.0:
            return
        with self._lock:  # reserve a slot, then sleep outside the lock
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self._sleep(start - now)


class JudgeClient:
    """
    Chat with a model behind an OpenAI-compatible endpoint (OpenAI, vLLM, TGI, llama.cpp, LiteLLM, ...).

    Args:
        base_url: e.g. `"https://api.openai.com/v1"` or `"http://localhost:8000/v1"`; `/chat/completions` is appended.
        model: the `model` field of each request.
        api_key_env: name of the environment variable holding the API key (sent as `Authorization: Bearer ...`);
            when it is unset no key is sent, which local servers accept. The key itself is never an argument, so it
            never lands in a config file or a log.
        timeout: seconds per request before it counts as failed (then retried).
        max_retries: retries after the first attempt for transient failures.
        backoff: first wait in seconds; doubled after each failure, capped at `max_backoff`.
        requests_per_second: rate limit shared by every thread using this client (`None`: unlimited).
        temperature, max_tokens: sent with each request (temperature 0 for reproducible judgments).
        extra_body: more request fields (e.g. `{"seed": 0}`).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        requests_per_second: float | None = None,
        temperature: float = 0.0,
        max_tokens: int = 1024,
        extra_body: dict | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not base_url:
            raise ValueError("The judge needs a base URL, e.g. http://localhost:8000/v1.")
        if max_retries < 0 or timeout <= 0:
            raise ValueError("max_retries must be >= 0 and timeout > 0.")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.extra_body = dict(extra_body or {})
        self.rate_limiter = RateLimiter(requests_per_second)
        self._sleep = sleep

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post(self, body: bytes) -> dict:
        request = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read().decode("utf-8"))

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        wait = min(self.backoff * 2**attempt, self.max_backoff)
        if retry_after:
            try:
                wait = min(max(wait, float(retry_after)), self.max_backoff)
            except ValueError:
                pass  # an HTTP date: keep the exponential wait
        return wait

    def chat(self, messages: list[dict]) -> str:
        """Send `messages` (`[{"role", "content"}]`) and return the first choice's text.

        Raises:
            [`JudgeRequestError`]: after `max_retries` retries of transient failures (the message names the URL, the
            number of attempts and the last error), at once for other HTTP errors (401, 404, ...), or when the body
            is not a chat completion.
        """
        body = json.dumps(
            {
                "model": self.model,
                "messages": messages,
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
                **self.extra_body,
            }
        ).encode("utf-8")
        last_error = "no attempt made"
        for attempt in range(self.max_retries + 1):
            self.rate_limiter.acquire()
            retry_after = None
            try:
                data = self._post(body)
            except urllib.error.HTTPError as error:
                detail = error.read().decode("utf-8", "replace")[:300]
                last_error = f"HTTP {error.code}: {detail}"
                if error.code not in _RETRYABLE_STATUS:
                    hint = f" (is ${self.api_key_env} set?)" if error.code in (401, 403) and self.api_key_env else ""
                    raise JudgeRequestError(
                        f"Judge endpoint {self.url} refused the request: {last_error}{hint}"
                    ) from None
                retry_after = error.headers.get("Retry-After") if error.headers else None
            except TimeoutError as error:
                last_error = f"timed out after {self.timeout} s ({error})"
            except urllib.error.URLError as error:
                if isinstance(error.reason, TimeoutError | socket.timeout):
                    last_error = f"timed out after {self.timeout} s"
                else:
                    last_error = f"connection failed: {error.reason}"
            except (ConnectionError, json.JSONDecodeError, UnicodeDecodeError) as error:
                last_error = f"{type(error).__name__}: {error}"
            else:
                try:
                    content = data["choices"][0]["message"]["content"]
                except (KeyError, IndexError, TypeError):
                    raise JudgeRequestError(
                        f"Judge endpoint {self.url} answered with something that is not a chat completion: "
                        f"{json.dumps(data)[:300]}"
                    ) from None
                return content if isinstance(content, str) else ""
            if attempt < self.max_retries:
                self._sleep(self._wait(attempt, retry_after))
        raise JudgeRequestError(
            f"Judge endpoint {self.url} failed after {self.max_retries + 1} attempts; last error: {last_error}"
        )


_PAIRWISE = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)


def parse_pairwise_verdict(text: str) -> str:
    """`"A"`, `"B"` or `"tie"` from a judge's reply holding `[[A]]`, `[[B]]` or `[[C]]` (tie; `[[tie]]` too).

    The same verdict may appear several times; no verdict, or two different ones, raises [`VerdictParseError`].
    """
    found = {m.upper() for m in _PAIRWISE.findall(text or "")}
    found = {"tie" if v in ("C", "TIE") else v for v in found}
    if len(found) != 1:
        what = "no verdict" if not found else f"conflicting verdicts {sorted(found)}"
        raise VerdictParseError(f"Judge reply holds {what} ([[A]], [[B]] or [[C]] expected): {text[:200]!r}")
    return found.pop()


_RATING = re.compile(r"\[\[\s*(-?\d+(?:\.\d+)?)\s*\]\]")


def parse_rating(text: str, low: float = 1, high: float = 5) -> float:
    """A rating written `[[4]]` (MT-Bench single-answer style) within `[low, high]`; the last one wins when the
    judge restates it. Raises [`VerdictParseError`] when there is none or it is out of range."""
    found = _RATING.findall(text or "")
    if not found:
        raise VerdictParseError(f"Judge reply holds no [[rating]]: {text[:200]!r}")
    value = float(found[-1])
    if not low <= value <= high:
        raise VerdictParseError(f"Judge rating {value} is outside [{low}, {high}]: {text[:200]!r}")
    return value


def parse_aspect_ratings(text: str, aspects: list[str], low: float = 1, high: float = 5) -> dict[str, float]:
    """Per-aspect ratings from the last JSON object in the reply, e.g. `{"helpfulness": 4, "honesty": 5}`.

    Every aspect must be present with a number in `[low, high]`; else [`VerdictParseError`].
    """
    text = text or ""
    data = None
    for start in reversed([i for i, ch in enumerate(text) if ch == "{"]):
        try:
            data, _ = json.JSONDecoder().raw_decode(text[start:])
            break
        except json.JSONDecodeError:
            continue
    if not isinstance(data, dict):
        raise VerdictParseError(f"Judge reply holds no JSON object of ratings: {text[:200]!r}")
    ratings = {}
    for aspect in aspects:
        value = data.get(aspect)
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise VerdictParseError(f"Judge rating for {aspect!r} is {value!r}, not a number in [{low}, {high}].")
        ratings[aspect] = float(value)
    return ratings
