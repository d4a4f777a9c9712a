"""An OpenAI-compatible `/v1/completions` stub on 127.0.0.1 for the tests of the `server` generation backend (bounded:
every handler answers once, sleeps wake up at shutdown; the fixture that starts it stops it)."""

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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


class StubCompletions:
    """A `/v1/completions` server whose replies come from `self.reply(request_json)`, returning `(status, body)`,
    `(status, body, delay_s)` or `(status, body, delay_s, headers)`. Every request is recorded with its path and
    Authorization header; `max_in_flight` is the most requests handled at once."""

    def __init__(self):
        self.requests, self.lock, self.stop = [], threading.Lock(), threading.Event()
        self.reply = default_reply
        self.in_flight = self.max_in_flight = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:
                    status, content, *rest = stub.reply(body)
                    delay = rest[0] if rest else 0.0
                    headers = rest[1] if len(rest) > 1 else {}
                    if delay:
                        stub.stop.wait(delay)
                    else:
                        time.sleep(0.01)  # long enough for concurrent requests to overlap
                    payload = json.dumps(content).encode()
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left
                finally:
                    with stub.lock:
                        stub.in_flight -= 1

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
