"""A minimal JSON client for OpenAI-compatible endpoints, shared by the LLM judge and the generation server backend.

[`Endpoint.post`] sends `POST {base_url}{path}` with a deadline per request (the whole reply, not each socket read: a
body trickled a byte at a time fails when the deadline passes), retries transient failures (timeouts, connection
errors, a connection cut mid-body or a garbled status line, a body that is not JSON, HTTP 408/409/429/5xx, honouring
`Retry-After`) with exponential backoff, and spaces requests with a [`RateLimiter`] shared by every thread. Secrets
stay secret:

- the API key is read from an environment variable named by the caller and sent as `Authorization: Bearer ...` to the
  configured host only: redirects are not followed (a redirected POST would otherwise be replayed, key included, to
  whatever host the `Location` names), they fail with a message naming the target;
- a base URL with credentials in it (`https://user:key@host/v1`) is refused, and every error message shows the URL
  without userinfo or query string, and with the key's value and any `Bearer` token masked. Error bodies are masked
  *before* they are cut to length, so a key straddling the cut cannot leak its first characters.

Only the standard library is used (`urllib.request`).
"""

import http.client
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable


__all__ = ["Endpoint", "EndpointError", "RateLimiter", "is_refusal", "redact_url"]

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}
# Refusals of one request (a prompt too long, filtered, malformed), as opposed to the whole endpoint failing (401, 403,
# 404: every other request would fail too). Callers judging many prompts record these and go on.
REFUSAL_STATUS = {400, 413, 422}
ERROR_BODY_CHARS = 300  # of an error body shown in a message (after masking)
_BEARER = re.compile(r"(Bearer\s+)[^\s\"',;]+", re.IGNORECASE)
_CHUNK = 65536


class EndpointError(RuntimeError):
    """The endpoint could not be reached, kept failing after every retry, refused the request, or redirected it.

    `status` is the HTTP status of a refusal (`None` for transport failures)."""

    status: int | None = None


def is_refusal(error: BaseException) -> bool:
    """Whether `error` is an endpoint's refusal of that one request (HTTP 400, 413, 422), not a failing endpoint."""
    return getattr(error, "status", None) in REFUSAL_STATUS


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


def redact_url(url: str) -> str:
    """`scheme://host[:port]/path` of `url`: no userinfo, query or fragment (where tokens hide)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return urllib.parse.urlunsplit((parts.scheme, host + port, parts.path, "", ""))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse every redirect: urllib then raises the 3xx as an `HTTPError`, which `Endpoint.post` reports."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class Endpoint:
    """
    JSON POSTs to an OpenAI-compatible API with retries, backoff, a shared rate limit and no leaked secrets.

    Args:
        base_url: e.g. `"http://localhost:8000/v1"`; must be http(s) and carry no credentials.
        api_key_env: name of the environment variable holding the API key (`None` or unset: no key is sent).
        timeout: seconds per request before it counts as failed (then retried).
        max_retries: retries after the first attempt for transient failures.
        backoff: first wait in seconds; doubled after each failure, capped at `max_backoff`.
        requests_per_second: rate limit shared by every thread using this endpoint (`None`: unlimited).
        error_class: the exception raised on failure (a subclass of [`EndpointError`] or of `Exception`).
        what: how messages name the endpoint (`"Judge endpoint"`).
    """

    def __init__(
        self,
        base_url: str,
        api_key_env: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        requests_per_second: float | None = None,
        error_class: type[Exception] = EndpointError,
        what: str = "Endpoint",
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not base_url:
            raise ValueError(f"{what} needs a base URL, e.g. http://localhost:8000/v1.")
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{what} base URL must be http(s)://host[:port]/path, got {redact_url(base_url)!r}.")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                f"{what} base URL {redact_url(base_url)!r} carries credentials (user:key@host): remove them and put "
                "the key in an environment variable named by the api_key_env option instead."
            )
        if max_retries < 0 or timeout <= 0:
            raise ValueError("max_retries must be >= 0 and timeout > 0.")
        self.base_url = base_url.rstrip("/")
        self.display_url = redact_url(self.base_url)
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.rate_limiter = RateLimiter(requests_per_second)
        self.error_class = error_class
        self.what = what
        self._sleep = sleep
        self._opener = urllib.request.build_opener(_NoRedirect())

    # ---------------------------------------------------------------------------------------------- secrets
    def _key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None if self.api_key_env else None

    def redact(self, text: str) -> str:
        """`text` with the API key's value and any bearer token masked."""
        key = self._key()
        if key:
            text = text.replace(key, "***")
        return _BEARER.sub(r"\1***", text)

    def _error(self, message: str, status: int | None = None) -> Exception:
        error = self.error_class(self.redact(message))
        error.status = status
        return error

    # ---------------------------------------------------------------------------------------------- requests
    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        key = self._key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _send(self, url: str, body: bytes | None, text_reply: bool = False) -> dict:
        """One attempt (a POST of `body`, or a GET when it is `None`). The socket timeout bounds each wait for data;
        the deadline bounds the whole reply, checked as each chunk arrives (`read1` returns what has come, so a trickled
        body cannot reset the clock). With `text_reply`, a successful body that is not JSON is `{"text": body}`."""
        deadline = time.monotonic() + self.timeout
        method = "GET" if body is None else "POST"
        request = urllib.request.Request(url, data=body, headers=self._headers(), method=method)
        with self._opener.open(request, timeout=self.timeout) as response:
            chunks = []
            while chunk := response.read1(_CHUNK):
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the reply was still arriving after {self.timeout} s")
            text = b"".join(chunks).decode("utf-8")
            if text_reply:
                try:
                    return json.loads(text)
                except json.JSONDecodeError:
                    return {"text": text}
            return json.loads(text)

    def _error_body(self, error: urllib.error.HTTPError) -> str:
        """The start of an error reply's body, masked first and cut after (a key near the cut stays whole, masked)."""
        try:
            raw = error.read(_CHUNK)
        except (OSError, http.client.HTTPException):
            raw = b""
        return self.redact(raw.decode("utf-8", "replace"))[:ERROR_BODY_CHARS]

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        wait = min(self.backoff * 2**attempt, self.max_backoff)
        if retry_after:
            try:
                wait = min(max(wait, float(retry_after)), self.max_backoff)
            except ValueError:
                pass  # an HTTP date: keep the exponential wait
        return wait

    def get(self, path: str) -> dict:
        """GET `base_url + path` and return the decoded JSON reply; retries and errors as [`post`]."""
        return self._request(path, None)

    def post(self, path: str, payload: dict, text_reply: bool = False) -> dict:
        """POST `payload` as JSON to `base_url + path` and return the decoded JSON reply (`text_reply`: a plain-text
        success reply, as vLLM's `/v1/load_lora_adapter` sends, is returned as `{"text": ...}` instead of retried).

        Raises `error_class` after `max_retries` retries of transient failures (naming the URL, the number of attempts
        and the last error), at once for other HTTP errors (401, 404, ...) and for redirects.
        """
        return self._request(path, json.dumps(payload).encode("utf-8"), text_reply)

    def _request(self, path: str, body: bytes | None, text_reply: bool = False) -> dict:
        url = self.base_url + path
        shown = self.display_url + path
        last_error = "no attempt made"
        for attempt in range(self.max_retries + 1):
            self.rate_limiter.acquire()
            retry_after = None
            try:
                return self._send(url, body, text_reply)
            except urllib.error.HTTPError as error:
                if 300 <= error.code < 400:
                    target = error.headers.get("Location", "") if error.headers else ""
                    raise self._error(
                        f"{self.what} {shown} redirected the request (HTTP {error.code}) to "
                        f"{redact_url(urllib.parse.urljoin(url, target)) if target else 'another address'}: redirects "
                        "are not followed (the API key would go along); set the base URL to the final address."
                    ) from None
                last_error = f"HTTP {error.code}: {self._error_body(error)}"
                if error.code not in RETRYABLE_STATUS:
                    hint = f" (is ${self.api_key_env} set?)" if error.code in (401, 403) and self.api_key_env else ""
                    message = f"{self.what} {shown} refused the request: {last_error}{hint}"
                    raise self._error(message, status=error.code) from None
                retry_after = error.headers.get("Retry-After") if error.headers else None
            except TimeoutError as error:
                last_error = f"timed out after {self.timeout} s ({error})"
            except urllib.error.URLError as error:
                if isinstance(error.reason, TimeoutError | socket.timeout):
                    last_error = f"timed out after {self.timeout} s"
                else:
                    last_error = f"connection failed: {error.reason}"
            except (OSError, http.client.HTTPException, json.JSONDecodeError, UnicodeDecodeError) as error:
                # a connection reset or cut mid-body (IncompleteRead), a garbled status line (BadStatusLine): transient
                last_error = f"{type(error).__name__}: {error}"
            if attempt < self.max_retries:
                self._sleep(self._wait(attempt, retry_after))
        raise self._error(
            f"{self.what} {shown} failed after {self.max_retries + 1} attempts; last error: {last_error}"
        )
