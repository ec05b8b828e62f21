"""Talking to OpenAI-compatible chat-completions endpoints: the API targets (`bench.targets`) and the LLM judge.

The `openai` client does the transport: retries with exponential backoff (0.5 s doubling, jittered, up to 8 s, or
the server's Retry-After) on connection errors, timeouts, 408/409/429 and 5xx answers, `bench.api.max_retries` times,
each try bounded by `bench.api.timeout_s`. This module adds what the bench needs on top:

- which failures are the user's to fix, raised as one-line `ApiError`s naming the endpoint: the endpoint cannot be
  reached, it does not know the model (404), it refuses the key (401/403), or `api_key_env` names an unset variable;
- which are one request's bad luck (a timeout or 5xx after the retries, an answer without a message): the request
  returns a `Reply` with `error` set, which the caller counts (`api/failed`, `judge/failed`) and goes on;
- at most `bench.api.max_concurrency` requests in flight (`run_concurrently`, a bounded thread pool).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, TypeVar, cast

from forge_trl.config.bench import ApiConfig
from forge_trl.errors import ForgeError

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

# Sent when an endpoint takes no key: the client insists on one, local servers ignore it (vLLM's convention).
NO_KEY = "EMPTY"


class ApiError(ForgeError):
    """An endpoint the bench cannot use as configured: unreachable, unknown model, refused or missing key."""

    kind = "api error"


@dataclass
class Reply:
    """One chat completion: the message text, why it ended (`stop`, `length`, ...), its length in tokens when the
    server reports usage; `error` (and empty text) when the request failed after its retries."""

    text: str
    finish_reason: Optional[str] = None
    tokens: Optional[int] = None
    error: Optional[str] = None


def chat_messages(row: dict | str, system: str | None = None) -> list[dict]:
    """A held-out row as chat messages: its `system` turn (if any), then its `prompt` as the user turn."""
    data = {"prompt": row} if isinstance(row, str) else row
    system = data.get("system") if system is None else system
    messages = [{"role": "system", "content": system}] if isinstance(system, str) and system.strip() else []
    return messages + [{"role": "user", "content": data["prompt"]}]


class ChatEndpoint:
    """One (base_url, model) pair behind an `openai.OpenAI` client; `where` names it in every message."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None, api: ApiConfig, *, where: str):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.api = api
        self.where = where
        key = NO_KEY
        if api_key_env:
            key = os.environ.get(api_key_env, "")
            if not key:
                raise ApiError(
                    f"{where}: api_key_env for {self.base_url} names the environment variable {api_key_env}, "
                    "which is not set "
                    f"(export {api_key_env}=<key>, or api_key_env=null for an endpoint without a key)"
                )
        from openai import OpenAI

        _quiet_http_request_lines()
        self.client = OpenAI(base_url=self.base_url, api_key=key, max_retries=api.max_retries, timeout=api.timeout_s)

    @property
    def name(self) -> str:
        return f"{self.model}@{self.base_url}"

    def complete(self, messages: list[dict], *, max_tokens: int, temperature: float = 0.0) -> Reply:
        """One chat completion. An ApiError when the endpoint is unusable; a Reply with `error` when this request
        failed after its retries."""
        import openai

        try:
            completion = self.client.chat.completions.create(
                model=self.model,
                messages=cast(Any, messages),  # plain {role, content} dicts: what the typed params describe
                max_tokens=max_tokens,
                temperature=temperature,
            )
        except openai.APITimeoutError:
            return self._failed(f"no answer within {self.api.timeout_s:g} s")
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise ApiError(f"{self.where}: cannot reach {self.base_url} ({_short(str(cause))})") from None
        except openai.NotFoundError as exc:
            raise ApiError(
                f"{self.where}: {self.base_url} answered 404 Not Found for model '{self.model}' "
                f"(is the model name right?): {_server_message(exc)}"
            ) from None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            key = f"the key in ${self.api_key_env}" if self.api_key_env else "no API key (api_key_env is null)"
            raise ApiError(
                f"{self.where}: {self.base_url} refused {key}: HTTP {exc.status_code} {_server_message(exc)}"
            ) from None
        except openai.APIStatusError as exc:
            return self._failed(f"HTTP {exc.status_code}: {_server_message(exc)}")
        except openai.OpenAIError as exc:  # an answer the client could not read
            return self._failed(f"unreadable answer: {_short(str(exc))}")
        try:
            choice = completion.choices[0]
            text = choice.message.content or ""
        except (AttributeError, IndexError, TypeError):
            return self._failed("the answer has no choices[0].message (not a chat-completions response)")
        usage = getattr(completion, "usage", None)
        tokens = getattr(usage, "completion_tokens", None)
        return Reply(str(text), choice.finish_reason, tokens if isinstance(tokens, int) else None)

    def _failed(self, why: str) -> Reply:
        tries = self.api.max_retries + 1
        return Reply("", error=f"{why} (after {tries} {'try' if tries == 1 else 'tries'})")


def run_concurrently(work: Callable[[T], R], items: Sequence[T], max_concurrency: int) -> list[R]:
    """`[work(item) for item in items]`, at most `max_concurrency` at a time, in order. The first ForgeError stops
    the rest (requests not yet started are cancelled) and is raised."""
    if not items:
        return []
    if max_concurrency == 1 or len(items) == 1:
        return [work(item) for item in items]
    pool = ThreadPoolExecutor(max_workers=min(max_concurrency, len(items)), thread_name_prefix="forge-bench-api")
    futures = [pool.submit(work, item) for item in items]
    try:
        return [future.result() for future in futures]
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)


def _quiet_http_request_lines() -> None:
    """httpx logs one INFO line per request ("HTTP Request: POST ... 200 OK"): thousands in a bench. Its warnings
    stay; the openai client's own lines (a retry and its delay) stay too."""
    for name in ("httpx", "httpx2"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _server_message(exc) -> str:
    """The error message in an OpenAI-style error body, or the start of the body."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        if message:
            return _short(str(message))
    response = getattr(exc, "response", None)
    text = getattr(response, "text", "") if response is not None else ""
    return _short(text or str(exc))
