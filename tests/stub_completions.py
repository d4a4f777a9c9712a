"""An OpenAI-compatible `/v1/completions` stub on 127.0.0.1 for the tests of the `server` generation backend (bounded:
every handler answers once, sleeps wake up at shutdown; the fixture that starts it stops it)."""

import hashlib
import json

from stub_server import StubServer


# Words of the tiny review language (trl_rankalign.tiny.language): samples get rewards of different signs.
PHRASES = [
    " The pasta was great and fresh.",
    " The pasta was awful and cold.",
    " It was okay.",
    " The room was clean and lovely.",
    " The service was slow and rude.",
    " Fine.",
]


def sample_text(prompt, seed, index) -> str:
    """The stub's deterministic sample `index` for a prompt (token ids or text) and a request seed."""
    digest = hashlib.sha256(json.dumps([prompt, seed, index]).encode()).digest()
    return PHRASES[digest[0] % len(PHRASES)]


def default_reply(request: dict):
    """`n` choices, each a deterministic function of (prompt, seed, index)."""
    n = request.get("n", 1)
    choices = [
        {"index": i, "text": sample_text(request["prompt"], request.get("seed"), i), "finish_reason": "stop"}
        for i in range(n)
    ]
    return 200, {"object": "text_completion", "model": request.get("model"), "choices": choices}


class StubCompletions(StubServer):
    """A `/v1/completions` server ([`StubServer`]) answering [`default_reply`] unless `reply` is replaced."""

    min_delay_s = 0.01  # long enough for concurrent requests to overlap

    def __init__(self):
        super().__init__(default_reply)
