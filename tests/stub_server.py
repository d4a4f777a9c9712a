"""The OpenAI-compatible HTTP stubs of the tests (`stub_completions.py`, `stub_judge.py`, and `test_faults.py`) share
this server: it binds 127.0.0.1 on a free port, records every request, answers each from `self.reply(request_json)`
(a [`Fault`] for what a well-behaved server never does on demand; [`script`] to fault the first requests only) and
wakes sleeping handlers at shutdown, so every test that starts one is bounded."""

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Fault:
    """A reply no well-behaved server gives, written byte by byte by the stub:

    - `"raw"`: status `status` with `body` as it is (e.g. malformed JSON);
    - `"trickle"`: a correct `Content-Length`, then `body` one byte every `interval` seconds;
    - `"cut"`: a correct `Content-Length`, half of `body`, then the connection closes (`IncompleteRead`);
    - `"bad_status_line"`: a garbage status line, then the connection closes (`BadStatusLine`).
    """

    kind: str
    body: bytes = b"{}"
    status: int = 200
    interval: float = 0.3


def script(replies: list, default: Callable) -> Callable:
    """A `reply` function answering the n-th request with `replies[n]` (a reply tuple, a [`Fault`], or a callable of
    the request), then every later one with `default(request)`; thread-safe (each scripted reply is used once)."""
    pending, lock = list(replies), threading.Lock()

    def reply(request):
        with lock:
            scripted = pending.pop(0) if pending else None
        if scripted is None:
            return default(request)
        return scripted(request) if callable(scripted) else scripted

    return reply


class StubServer:
    """
    A local server whose POST replies come from `self.reply(request_json)`, returning `(status, body)`,
    `(status, body, delay_s)`, `(status, body, delay_s, headers)` or a [`Fault`]. Every request is recorded in `requests` with its
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
        # a short poll: `shutdown` waits for one, and every test closes its stub
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
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
            result = self.reply(body)
            if isinstance(result, Fault):
                return self._fault(handler, result)
            status, content, *rest = result
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
        except OSError:
            pass  # the client timed out and left (broken pipe, reset), or a fault closed the connection
        finally:
            with self.lock:
                self.in_flight -= 1

    def _fault(self, handler: BaseHTTPRequestHandler, fault: Fault) -> None:
        if fault.kind == "bad_status_line":
            handler.wfile.write(b"HTTP/1.1 two hundred OK\r\n\r\n")
            handler.wfile.flush()
            handler.close_connection = True
            return
        handler.send_response(fault.status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(fault.body)))
        handler.end_headers()
        if fault.kind == "raw":
            handler.wfile.write(fault.body)
        elif fault.kind == "cut":
            handler.wfile.write(fault.body[: len(fault.body) // 2])
            handler.wfile.flush()
            handler.connection.shutdown(socket.SHUT_RDWR)  # the client sees the body end early
            handler.close_connection = True
        elif fault.kind == "trickle":
            for byte in fault.body:  # bounded: one byte per interval, stopped at shutdown
                if self.stop.wait(fault.interval):
                    break
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
        else:
            raise ValueError(f"Unknown fault {fault.kind!r}.")

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
