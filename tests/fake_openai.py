"""A real HTTP server on loopback that speaks the OpenAI chat-completions protocol, for tests.

Nothing is mocked: the client under test opens sockets, sends JSON and parses what comes back, so the
SDK's own behaviour (timeouts, error classes, headers) is part of what the tests check. Each POST to
/v1/chat/completions consumes the next scripted step; every request is recorded for assertions.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    content: str | None
    reasoning: str | None = None
    finish_reason: str = "stop"


@dataclass
class Error:
    status: int
    body: str = "scripted error"
    retry_after: float | None = None


@dataclass
class Slow:
    seconds: float
    then: object


@dataclass
class Drop:
    """Close the connection without sending a response."""


def reply(content: str | None, reasoning: str | None = None, finish_reason: str = "stop") -> Reply:
    return Reply(content, reasoning, finish_reason)


def error(status: int, body: str = "scripted error", retry_after: float | None = None) -> Error:
    return Error(status, body, retry_after)


def slow(seconds: float, then: object = None) -> Slow:
    return Slow(seconds, then if then is not None else reply("late"))


def drop() -> Drop:
    return Drop()


class FakeOpenAI:
    """`with FakeOpenAI() as server: server.script(reply("hi")); ... server.base_url ...`"""

    def __init__(self, models: list[str] | None = None, models_status: int = 200, api_key: str | None = None):
        self.models = models if models is not None else ["fake-model"]
        self.models_status = models_status  # e.g. 404 for servers without /models
        self.api_key = api_key  # when set, requests without `Bearer <api_key>` get 401
        self.requests: list[tuple[str, dict, dict | None]] = []  # (path, lower-cased headers, JSON body)
        self._steps: list[object] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()  # wakes every sleeping `slow` step at shutdown
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None  # clients hanging up is expected here
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def script(self, *steps) -> "FakeOpenAI":
        with self._lock:
            self._steps.extend(steps)
        return self

    @property
    def chat_requests(self) -> list[dict]:
        """The JSON bodies of the chat requests, in order."""
        with self._lock:
            return [body for path, _, body in self.requests if path.endswith("/chat/completions")]

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FakeOpenAI":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _record(self, path: str, headers: dict, body: dict | None) -> None:
        with self._lock:
            self.requests.append((path, headers, body))

    def _next_step(self) -> object:
        with self._lock:
            return self._steps.pop(0) if self._steps else Error(500, "script exhausted: no step left for this request")


def _handler_for(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            fake._record(self.path, _headers(self), None)
            if not self._authorized():
                return
            if self.path.rstrip("/") != "/v1/models":
                return self._send(404, _error_body(f"no route {self.path}", "not_found"))
            if fake.models_status != 200:
                return self._send(fake.models_status, _error_body("models endpoint unavailable", "not_found"))
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in fake.models]
            self._send(200, {"object": "list", "data": data})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"null")
            fake._record(self.path, _headers(self), body)
            if not self._authorized():
                return
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._send(404, _error_body(f"no route {self.path}", "not_found"))
            self._play(fake._next_step(), body)

        def _authorized(self) -> bool:
            if fake.api_key is None or self.headers.get("Authorization") == f"Bearer {fake.api_key}":
                return True
            self._send(401, _error_body("Incorrect API key provided", "invalid_api_key"))
            return False

        def _play(self, step: object, body: dict) -> None:
            if isinstance(step, Slow):
                if fake._closing.wait(step.seconds):
                    return  # shutting down: give up without answering
                return self._play(step.then, body)
            if isinstance(step, Drop):
                self.close_connection = True
                return
            if isinstance(step, Error):
                headers = {} if step.retry_after is None else {"Retry-After": f"{step.retry_after:g}"}
                return self._send(step.status, _error_body(step.body, "scripted"), headers)
            assert isinstance(step, Reply), step
            self._send(200, _completion(step, body.get("model", "fake-model")))

        def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                self.close_connection = True  # the client gave up (e.g. its timeout passed)

    return Handler


def _headers(handler: BaseHTTPRequestHandler) -> dict:
    return {name.lower(): value for name, value in handler.headers.items()}


def _error_body(message: str, code: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "code": code, "param": None}}


def _completion(step: Reply, model: str) -> dict:
    message = {"role": "assistant", "content": step.content}
    if step.reasoning is not None:
        message["reasoning_content"] = step.reasoning
    completion_tokens = len((step.content or "").split()) + len((step.reasoning or "").split())
    return {
        "id": f"chatcmpl-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": step.finish_reason, "logprobs": None}],
        "usage": {"prompt_tokens": 7, "completion_tokens": completion_tokens, "total_tokens": 7 + completion_tokens},
    }
