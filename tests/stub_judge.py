"""An OpenAI-compatible judge stub on 127.0.0.1 for the tests of `eval win-rate` and `rank` (bounded, shut down by
the fixture that starts it)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StubJudge:
    """An OpenAI-compatible /chat/completions on 127.0.0.1 whose replies come from `self.reply(request_json)`,
    which returns `(status, body_text_or_dict)`, `(status, body_text_or_dict, delay_s)` or `(status, body, delay_s,
    headers)`; every request (a GET too, recorded with `"method": "GET"`) is recorded with its path and Authorization
    header. Sleeping handlers wake up at shutdown."""

    def __init__(self):
        self.requests, self.lock, self.stop = [], threading.Lock(), threading.Event()
        self.reply = lambda request: (200, "[[C]]", 0.0)
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                status, content, *rest = stub.reply(body)
                delay = rest[0] if rest else 0.0
                headers = rest[1] if len(rest) > 1 else {}
                if delay:
                    stub.stop.wait(delay)
                if isinstance(content, str):
                    content = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
                payload = json.dumps(content).encode()
                try:
                    self.send_response(status)
                    if status == 429:
                        self.send_header("Retry-After", "0")
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

            def do_GET(self):  # a redirected POST arrives as a GET: record it, with its headers
                with stub.lock:
                    stub.requests.append(
                        {"method": "GET", "path": self.path, "auth": self.headers.get("Authorization")}
                    )
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

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
