"""A loopback OpenAI-compatible chat server with a scripted queue of behaviours, for tests.

    server = ScriptedLLMServer().start()
    server.push(reply('{"candidates": []}', prompt_tokens=100, completion_tokens=20))
    server.push(status(429, retry_after="0"), status(500), slow(2.0, "..."))
    client = OpenAI(base_url=server.base_url, api_key="test")
    ...
    server.stop()

Each POST /v1/chat/completions pops the next behaviour (in arrival order); when the queue is
empty, `default` is used if set, else an HTTP 500 "script exhausted". Every request received is
recorded in `server.requests` (path, lower-cased headers, parsed JSON body), including those answered with an
error, so tests can count attempts and inspect what the client sent.

`refuse` plays a server without (some) structured outputs: a request whose response_format type is in
`refuse` (a dict type -> Behaviour, e.g. {"json_schema": status(400, message=...)}) gets that behaviour
without consuming the queue, whenever it comes.

Hostile servers: `trickle(seconds, content)` sends its reply one byte every `seconds` (each read gets
a byte, so a per-read timeout never fires); a status message may hold "{authorization}", replaced by
the request's Authorization header (a server that echoes the API key). `server.billed` lists the
usage of every reply the server started sending: what a provider would bill, whether or not the
client lived to read it; `server.bill(price_in, price_out)` is its dollar total.
"""
from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Behaviour:
    kind: str  # "reply" | "status"
    content: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str = "stop"
    code: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    delay_s: float = 0.0  # sleep before answering (longer than the client timeout = a timeout)
    trickle_s: float = 0.0  # send the body one byte every trickle_s seconds


def reply(content: str, prompt_tokens: int | None = 100, completion_tokens: int | None = 50,
          delay_s: float = 0.0, finish_reason: str = "stop") -> Behaviour:
    """A proper chat.completion; usage is omitted when both token counts are None."""
    return Behaviour("reply", content=content, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     delay_s=delay_s, finish_reason=finish_reason)


def status(code: int, retry_after: str | None = None, delay_s: float = 0.0, message: str = "") -> Behaviour:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    body = {"error": {"message": message or f"scripted HTTP {code}", "type": "scripted", "code": code}}
    return Behaviour("status", code=code, headers=headers, body=body, delay_s=delay_s)


def slow(delay_s: float, content: str = '{"candidates": []}') -> Behaviour:
    return reply(content, delay_s=delay_s)


def trickle(trickle_s: float, content: str = '{"candidates": []}', prompt_tokens: int | None = 100,
            completion_tokens: int | None = 50) -> Behaviour:
    """A reply whose body arrives one byte every `trickle_s` seconds."""
    b = reply(content, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    b.trickle_s = trickle_s
    return b


def response_format_type(body: Any) -> str:
    """The response_format type a request asked for: json_schema | json_object | text (none sent)."""
    if isinstance(body, dict) and isinstance(body.get("response_format"), dict):
        return str(body["response_format"].get("type", "text"))
    return "text"


class LoopbackHTTP:
    """Serves a request-handler class on 127.0.0.1 (a free port) from a daemon thread; stops cleanly."""

    _httpd: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def _serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        httpd.block_on_close = False
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    def start(self):  # subclasses define their handler and call _serve
        raise NotImplementedError

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=2)
            self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ScriptedLLMServer(LoopbackHTTP):
    def __init__(self, default: Behaviour | None = None, refuse: dict[str, Behaviour] | None = None):
        self.default = default
        self.refuse = dict(refuse or {})
        self.queue: deque[Behaviour] = deque()
        self.requests: list[dict[str, Any]] = []
        self.billed: list[tuple[int, int]] = []  # (prompt, completion) tokens of every reply started
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._counter = 0

    # ---- script ---------------------------------------------------------------------------------
    def push(self, *behaviours: Behaviour) -> "ScriptedLLMServer":
        with self._lock:
            self.queue.extend(behaviours)
        return self

    def _next(self, body: Any, path: str, headers: dict[str, str]) -> tuple[Behaviour, int]:
        with self._lock:
            self.requests.append({"path": path, "headers": headers, "body": body})
            self._counter += 1
            fmt = response_format_type(body)
            if fmt in self.refuse:
                return self.refuse[fmt], self._counter
            if self.queue:
                return self.queue.popleft(), self._counter
            if self.default is not None:
                return self.default, self._counter
            return status(500, message="script exhausted"), self._counter

    def bill(self, price_in: float, price_out: float) -> float:
        """What the replies sent so far cost, in USD, at these prices per million tokens."""
        with self._lock:
            return sum(p * price_in + c * price_out for p, c in self.billed) / 1e6

    # ---- lifecycle ------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "ScriptedLLMServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: simple and predictable

            def log_message(self, *args):  # keep pytest output clean
                pass

            def _send_json(self, code: int, payload: Any, headers: dict[str, str] | None = None,
                           trickle_s: float = 0.0) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    if not trickle_s:
                        self.wfile.write(data)
                        return
                    for i in range(len(data)):
                        self.wfile.write(data[i:i + 1])
                        self.wfile.flush()
                        time.sleep(trickle_s)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): nothing to do

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send_json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                behaviour, number = server._next(body, self.path, {k.lower(): v for k, v in self.headers.items()})
                if behaviour.delay_s:
                    time.sleep(behaviour.delay_s)
                if behaviour.kind == "status":
                    body = behaviour.body
                    auth = self.headers.get("Authorization", "")
                    if auth and "{authorization}" in json.dumps(body):
                        body = json.loads(json.dumps(body).replace("{authorization}", auth))
                    self._send_json(behaviour.code, body, behaviour.headers)
                    return
                payload: dict[str, Any] = {
                    "id": f"chatcmpl-scripted-{number}",
                    "object": "chat.completion",
                    "created": 1700000000,
                    "model": (body or {}).get("model", "scripted") if isinstance(body, dict) else "scripted",
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": behaviour.content},
                        "finish_reason": behaviour.finish_reason,
                    }],
                }
                if behaviour.prompt_tokens is not None or behaviour.completion_tokens is not None:
                    p, c = behaviour.prompt_tokens or 0, behaviour.completion_tokens or 0
                    payload["usage"] = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
                with server._lock:
                    server.billed.append((behaviour.prompt_tokens or 0, behaviour.completion_tokens or 0))
                self._send_json(200, payload, behaviour.headers, behaviour.trickle_s)

        self._serve(Handler)
        return self
