"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for the bench's API targets and LLM judges.

    server = StubServer({"target": lambda body: "5", "judge": judge_rule})
    server.url            # http://127.0.0.1:<port>/v1
    server.count("judge") # requests the judge model received (retries included)

Each route maps a model name to `script(body) -> str | Answer`: a string is the assistant message; an `Answer` can
instead sleep past the client's timeout, answer an HTTP error status (500, ...), or send a body that is not a chat
completion (garbage). A model without a route answers 404 with an OpenAI-style error body, as real servers do.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Union


@dataclass
class Answer:
    """What the stub does with one request."""

    content: str = ""
    status: int = 200
    sleep: float = 0.0  # seconds before answering (past the client's timeout: the client gives up)
    raw: bytes | None = None  # a body sent as is, with status 200 (not a chat completion)
    finish_reason: str = "stop"
    usage: bool = True  # report completion_tokens (one per whitespace-separated word)


Script = Callable[[dict], Union[str, Answer]]


def failing(times: int, then: Script, status: int = 500) -> Script:
    """A script that answers `status` the first `times` requests, then as `then`."""
    seen = {"n": 0}
    lock = threading.Lock()

    def script(body: dict):
        with lock:
            seen["n"] += 1
            n = seen["n"]
        return Answer(status=status) if n <= times else then(body)

    return script


def sections(body: dict) -> dict[str, str]:
    """The `[Title]\\ntext` sections of the last (user) message the bench's judge prompts are made of."""
    text = body["messages"][-1]["content"]
    return {title: value for title, value in re.findall(r"\[([^\]\n]+)\]\n(.*?)\n\n", text, re.S)}


class StubServer:
    def __init__(self, routes: dict[str, Script]):
        self.routes = routes
        self.requests: list[dict] = []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                model = body.get("model")
                if model not in outer.routes:
                    error = {"error": {"message": f"The model '{model}' does not exist", "type": "not_found"}}
                    return self._send(404, json.dumps(error).encode())
                answer = outer.routes[model](body)
                if isinstance(answer, str):
                    answer = Answer(answer)
                if answer.sleep:
                    time.sleep(answer.sleep)
                if answer.raw is not None:
                    return self._send(200, answer.raw, "text/plain")
                if answer.status != 200:
                    error = {"error": {"message": f"stub error {answer.status}", "type": "server_error"}}
                    return self._send(answer.status, json.dumps(error).encode())
                completion = {
                    "id": "chatcmpl-stub",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": answer.content},
                            "finish_reason": answer.finish_reason,
                        }
                    ],
                }
                if answer.usage:
                    words = len(answer.content.split())
                    completion["usage"] = {"prompt_tokens": 1, "completion_tokens": words, "total_tokens": words + 1}
                self._send(200, json.dumps(completion).encode())

            def _send(self, status: int, data: bytes, kind: str = "application/json"):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(data)))
                    # The openai client waits this long before a retry (instead of its 0.5 s backoff): quick tests.
                    self.send_header("retry-after-ms", "10")
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (a timeout test)
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, model: str | None = None) -> int:
        return sum(1 for r in self.requests if model is None or r["body"].get("model") == model)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def closed_port_url() -> str:
    """The URL of a port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
