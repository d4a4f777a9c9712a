"""A small client for an OpenAI-compatible chat endpoint, and parsers for what a judge answers.

[`JudgeClient.chat`] sends `POST {base_url}/chat/completions` and returns the reply's text, through
[`trl_rankalign.sampling.http.Endpoint`]: a timeout per request, retries with exponential backoff on transient failures
(timeouts, connection errors, HTTP 408/409/429/5xx, honouring `Retry-After`), a shared rate limit in requests per
second, no redirects followed (the key never travels to another host) and no secret in any error message. It knows
nothing about verdicts: the parsers below turn the text into a pairwise verdict ([`parse_pairwise_verdict`]), a 1-5
rating ([`parse_rating`]) or per-aspect ratings ([`parse_aspect_ratings`]), raising [`VerdictParseError`] on anything
else, so callers count garbage as an error, never as a result.

Two kinds of reply are garbage however they read:

- a reply cut at its token limit (`finish_reason: "length"`): it may restate the format example (`[[3]]`) before it
  was cut, so it is asked again (`truncated_retries` times) and, when it is still cut, returned as a
  [`TruncatedReply`], which every parser here refuses;
- the key: a reply quoting the request's `Authorization` header or the key itself is returned with it masked, so it
  never lands verbatim in a judgments cache.
"""

import json
import re
import time
from collections.abc import Callable

from .http import Endpoint, EndpointError, RateLimiter


__all__ = [
    "DEFAULT_JUDGE_SYSTEM_PROMPT",
    "DEFAULT_PAIRWISE_TEMPLATE",
    "JudgeClient",
    "JudgeError",
    "JudgeRequestError",
    "RateLimiter",
    "TruncatedReply",
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


class JudgeError(RuntimeError):
    """Base class of the judge's errors."""


class JudgeRequestError(JudgeError, EndpointError):
    """The endpoint could not be reached or kept failing after every retry, answered with a non-retryable error or a
    redirect, or with a body that is not a chat completion."""


class VerdictParseError(JudgeError, ValueError):
    """The judge's text holds no (or an ambiguous) verdict. Counted as an error by callers, never as a result."""


class TruncatedReply(str):
    """A judge's reply cut at its token limit (`finish_reason: "length"`): still the text (to store and show), but
    every parser raises [`VerdictParseError`] on it, so callers that parse what `chat` returns count it as an error
    without knowing about truncation."""


def _refuse_truncated(text: str) -> None:
    if isinstance(text, TruncatedReply):
        raise VerdictParseError(f"Judge reply was cut at its token limit (finish_reason 'length'): {text[-200:]!r}")


class JudgeClient:
    """
    Chat with a model behind an OpenAI-compatible endpoint (OpenAI, vLLM, TGI, llama.cpp, LiteLLM, ...).

    Args:
        base_url: e.g. `"https://api.openai.com/v1"` or `"http://localhost:8000/v1"`; `/chat/completions` is appended.
            Credentials in the URL (`user:key@host`) are refused.
        model: the `model` field of each request.
        api_key_env: name of the environment variable holding the API key (sent as `Authorization: Bearer ...`);
            when it is unset no key is sent, which local servers accept. The key itself is never an argument, so it
            never lands in a config file or a log, and it is masked in every error message.
        timeout: seconds per request before it counts as failed (then retried).
        max_retries: retries after the first attempt for transient failures.
        backoff: first wait in seconds; doubled after each failure, capped at `max_backoff`.
        requests_per_second: rate limit shared by every thread using this client (`None`: unlimited).
        temperature, max_tokens: sent with each request (temperature 0 for reproducible judgments).
        extra_body: more request fields (e.g. `{"seed": 0}`).
        truncated_retries: times a reply cut at `max_tokens` is asked again before it is returned as a
            [`TruncatedReply`] (which the parsers refuse).
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
        truncated_retries: int = 1,
    ):
        if not base_url:
            raise ValueError("The judge needs a base URL, e.g. http://localhost:8000/v1.")
        self.endpoint = Endpoint(
            base_url,
            api_key_env=api_key_env,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            max_backoff=max_backoff,
            requests_per_second=requests_per_second,
            error_class=JudgeRequestError,
            what="Judge endpoint",
            sleep=sleep,
        )
        self.url = self.endpoint.display_url + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.extra_body = dict(extra_body or {})
        if truncated_retries < 0:
            raise ValueError(f"truncated_retries must be >= 0, got {truncated_retries}.")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(
                f"The judge's max_tokens (--judge_max_tokens) must be a positive integer, got {max_tokens!r}."
            )
        self.truncated_retries = truncated_retries
        self.rate_limiter = self.endpoint.rate_limiter

    def settings(self) -> dict:
        """What changes the judge's replies (part of every judgment cache key): model and request fields."""
        return {
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "extra_body": self.extra_body,
        }

    def chat(self, messages: list[dict]) -> str:
        """Send `messages` (`[{"role", "content"}]`) and return the first choice's text, the API key masked in it.

        A reply cut at its token limit is asked again up to `truncated_retries` times, then returned as a
        [`TruncatedReply`] (the parsers refuse it: an error, never a rating).

        Raises:
            [`JudgeRequestError`]: after `max_retries` retries of transient failures (the message names the URL, the
            number of attempts and the last error), at once for other HTTP errors (401, 404, ...) and redirects, or
            when the body is not a chat completion. `error.status` is the HTTP status of a refusal.
        """
        payload = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            **self.extra_body,
        }
        for _ in range(self.truncated_retries + 1):
            data = self.endpoint.post("/chat/completions", payload)
            try:
                choice = data["choices"][0]
                content = choice["message"]["content"]
            except (KeyError, IndexError, TypeError):
                shown = self.endpoint.redact(json.dumps(data))[:300]  # mask first, then cut
                raise JudgeRequestError(
                    f"Judge endpoint {self.url} answered with something that is not a chat completion: {shown}"
                ) from None
            text = self.endpoint.redact(content) if isinstance(content, str) else ""
            if choice.get("finish_reason") != "length":
                return text
        return TruncatedReply(text)


_PAIRWISE = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)


def parse_pairwise_verdict(text: str) -> str:
    """`"A"`, `"B"` or `"tie"` from a judge's reply holding `[[A]]`, `[[B]]` or `[[C]]` (tie; `[[tie]]` too).

    The same verdict may appear several times; no verdict, or two different ones, raises [`VerdictParseError`].
    """
    _refuse_truncated(text)
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
    _refuse_truncated(text)
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
    _refuse_truncated(text)
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
