"""The OpenAI-compatible HTTP stubs of the tests (`stub_completions.py`, `stub_judge.py`) share this server: it binds
127.0.0.1 on a free port, records every request, answers each from `self.reply(request_json)` and wakes sleeping
handlers at shutdown, so every test that starts one is bounded."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StubServer:
    """
    A local server whose POST replies come from `self.reply(request_json)`, returning `(status, body)`,
    `(status, body, delay_s)` or `(status, body, delay_s, headers)`. Every request is recorded in `requests` with its
    path and Authorization header (a GET too, with `"method": "GET"`: a redirected POST arrives as one, answered 404);
    `max_in_flight` is the most POSTs handled at once. Subclasses shape the body (`payload`), add headers
    (`status_headers`) and set `min_delay_s`, the pause of an undelayed reply.
    """

    min_delay_s = 0.0

    def __init__(self, reply):
        self.requests, self.lock, self.stop = [], threading.Lock(), threading.Event()
        self.reply = reply
        self.in_flight = self.max_in_flight = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                stub._post(self)

            def do_GET(self):
                stub._record({"method": "GET", "path": self.path, "auth": self.headers.get("Authorization")})
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

    def payload(self, content) -> dict:
        """The JSON body sent for a reply's `content`."""
        return content

    def status_headers(self, status: int) -> dict:
        """Headers every reply of this status carries (besides the reply's own)."""
        return {}

    def _record(self, request: dict) -> None:
        with self.lock:
            self.requests.append(request)

    def _post(self, handler: BaseHTTPRequestHandler) -> None:
        body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        with self.lock:
            self.requests.append({"path": handler.path, "auth": handler.headers.get("Authorization"), **body})
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            status, content, *rest = self.reply(body)
            delay = rest[0] if rest else 0.0
            headers = {**self.status_headers(status), **(rest[1] if len(rest) > 1 else {})}
            if delay:
                self.stop.wait(delay)
            elif self.min_delay_s:
                time.sleep(self.min_delay_s)
            payload = json.dumps(self.payload(content)).encode()
            handler.send_response(status)
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and left
        finally:
            with self.lock:
                self.in_flight -= 1

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
