"""Request limits as plain ASGI middleware, and the bounded worker pool for the slow endpoints.

* :class:`BodySizeLimitMiddleware`: request-body size limit. Why not rely on the server: uvicorn has no
  body limit, and a limit checked in the endpoint comes too late (FastAPI has already buffered the body
  and turns read errors into a generic 400). This middleware answers 413 before the app runs: at once
  when ``Content-Length`` is over the limit, and, for chunked bodies without a length, as soon as the
  bytes read so far pass it. Bodies within the limit are buffered (at most ``max_bytes``) and replayed
  to the app unchanged.
* :class:`FiniteJSONMiddleware` and :func:`loads_finite`: NaN/Infinity in a JSON body is a 422 naming
  the field, never a 500 or a NaN flowing into the model.
* :class:`WorkerPool`: model work on a fixed number of threads behind a bounded queue; past the queue
  a request is refused at once (503 + ``Retry-After``) instead of waiting without bound.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
T = TypeVar("T")

# The server's defaults, here rather than in app.py so that ``esi --help`` does not import FastAPI and the model stack.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_UPLOAD_SECONDS = 120.0
DEFAULT_WORKERS = 2  # model calls are serialised by the backend's lock; a second thread overlaps parsing/plots
DEFAULT_MAX_QUEUE = 32


class BodySizeLimitMiddleware:
    """Reject request bodies larger than ``max_bytes`` with a JSON 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive; got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send: Send, received: int | None) -> None:
        size = f"{received} bytes" if received is not None else "the body"
        body = json.dumps({
            "detail": f"request body too large: {size} exceeds the limit of {self.max_bytes} bytes"
        }).encode()
        await send({
            "type": "http.response.start", "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        })
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:
                body = b'{"detail": "invalid Content-Length header"}'
                await send({"type": "http.response.start", "status": 400,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body})
                return
            if length > self.max_bytes:
                await self._reject(send, length)
                return
            if length == 0:
                await self.app(scope, receive, send)
                return
        # Buffer the body (bounded by max_bytes), then replay it as one message.
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await self._reject(send, None if declared is None else received)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# ---- JSON numbers must be finite -------------------------------------------------------------------------
#
# Python's json module accepts the non-standard literals NaN, Infinity and -Infinity, and reads an
# overflowing number such as 1e999 as inf. A non-finite number is never a valid value for this API: it
# either poisons a computation (a NaN age, a NaN sample) or, when pydantic echoes it back in a 422, makes
# the error response itself unserialisable (Starlette renders JSON with allow_nan=False) and turns a bad
# request into a 500 that drops the keep-alive connection.


class NonFiniteJSONError(ValueError):
    """A JSON body holds a non-finite number; ``loc`` is its path (keys and list indices)."""

    def __init__(self, loc: tuple[str | int, ...], value: str, count: int = 1) -> None:
        self.loc = loc
        self.value = value
        self.count = count
        more = f" (and {count - 1} more non-finite numbers)" if count > 1 else ""
        super().__init__(f"request body: {format_json_path(loc)} is {value}, not a finite number{more}; "
                         f"JSON numbers must be finite (NaN and Infinity are not JSON)")


class _NonFinite:
    """Stands in for a NaN/Infinity literal while parsing, so its position can be found afterwards."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def format_json_path(loc: tuple[str | int, ...]) -> str:
    """``("signal", 3, 17)`` -> ``signal[3][17]``; the empty path is ``the body``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the body"


def _first_non_finite(value: Any, loc: tuple[str | int, ...]) -> tuple[tuple[str | int, ...], str] | None:
    """Path and text of the first non-finite number in a parsed JSON value, or None."""
    if isinstance(value, _NonFinite):
        return loc, value.text
    if isinstance(value, float):
        return None if math.isfinite(value) else (loc, f"a number too large for a float ({value})")
    if isinstance(value, list):
        try:  # fast path for the common case, a row of finite numbers (C speed)
            if math.isfinite(math.fsum(value)):
                return None
        except (TypeError, OverflowError, ValueError):  # non-numbers, huge values, inf + -inf
            pass
        for index, item in enumerate(value):
            found = _first_non_finite(item, (*loc, index))
            if found is not None:
                return found
    elif isinstance(value, dict):
        for key, item in value.items():
            found = _first_non_finite(item, (*loc, key))
            if found is not None:
                return found
    return None


def loads_finite(body: bytes | str) -> Any:
    """``json.loads`` that raises :class:`NonFiniteJSONError` (naming the field) for NaN, ±Infinity or
    numbers that overflow to inf; other errors are those of ``json.loads`` (``ValueError``,
    ``UnicodeDecodeError``, ``RecursionError`` for absurd nesting)."""
    constants: list[str] = []

    def constant(text: str) -> _NonFinite:
        constants.append(text)
        return _NonFinite(text)

    value = json.loads(body, parse_constant=constant)
    found = _first_non_finite(value, ())
    if found is not None:
        overflowed = found[1] not in constants
        raise NonFiniteJSONError(found[0], found[1], len(constants) + overflowed)
    return value


_JSON_CONSTANTS = (b"NaN", b"Infinity")  # -Infinity contains Infinity
_INLINE_CHECK_BYTES = 256 * 1024


def _is_json(headers: dict[bytes, bytes]) -> bool:
    """Bodies FastAPI would parse as JSON: application/json, ``+json`` types, or no content type at all."""
    content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    return content_type in (b"", b"application/json") or content_type.endswith(b"+json")


class FiniteJSONMiddleware:
    """Answer 422, naming the field, for a JSON request body with a NaN/Infinity literal in it.

    One place for every endpoint, including those whose body FastAPI parses with the lenient
    ``json.loads``. The bytes are scanned first (fast); only a body that contains one of the literals
    is parsed, off the event loop when it is large. Add it *inside* :class:`BodySizeLimitMiddleware`
    (i.e. before it with ``add_middleware``): it buffers the body and relies on that limit. Numbers
    that overflow to inf (``1e999``) are caught where the body is read (``loads_finite``, pydantic
    models with ``allow_inf_nan=False``).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        if not _is_json(dict(scope.get("headers") or [])):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if any(literal in body for literal in _JSON_CONSTANTS):
            problem = await self._check(body)
            if problem is not None:
                await _send_json(send, 422, {"detail": str(problem), "loc": ["body", *problem.loc]})
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _check(body: bytes) -> NonFiniteJSONError | None:
        def check() -> NonFiniteJSONError | None:
            try:
                loads_finite(body)
            except NonFiniteJSONError as err:
                return err
            except (ValueError, RecursionError):
                return None  # not JSON at all: the endpoint gives its own 400/422
            return None

        if len(body) <= _INLINE_CHECK_BYTES:
            return check()
        import anyio.to_thread

        return await anyio.to_thread.run_sync(check)


async def _send_json(send: Send, status: int, content: Any) -> None:
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# ---- a bounded worker pool for the slow endpoints ------------------------------------------------------


class PoolFull(Exception):
    """The worker pool and its queue are full: answer 503 with ``Retry-After: retry_after_s``."""

    def __init__(self, running: int, waiting: int, retry_after_s: int) -> None:
        super().__init__(f"server busy: {running} requests running and {waiting} waiting (the limit); "
                         f"retry after {retry_after_s} s")
        self.running = running
        self.waiting = waiting
        self.retry_after_s = retry_after_s


class WorkerPool:
    """Run blocking model/plot work on ``workers`` threads with at most ``max_queue`` jobs waiting.

    Why not Starlette's ``run_in_threadpool``: its limiter queues without bound, so under a burst every
    request waits (and times out) and the sync endpoints, health included, starve for threads. Here a
    job past the queue is refused at once (:class:`PoolFull` -> 503 + ``Retry-After``). A job whose
    client went away keeps its slot until its thread is done, so the bound is on real work.
    """

    def __init__(self, workers: int = 2, max_queue: int = 32, *, name: str = "esi-api-worker",
                 max_retry_after_s: int = 60) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1; got {workers}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be 0 or more; got {max_queue}")
        self.workers = workers
        self.max_queue = max_queue
        self.max_retry_after_s = max_retry_after_s
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._admitted = 0  # running + waiting
        self._running = 0
        self._rejected = 0
        self._mean_s = 1.0  # moving average of a job's run time, for Retry-After

    @property
    def capacity(self) -> int:
        return self.workers + self.max_queue

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"workers": self.workers, "max_queue": self.max_queue, "running": self._running,
                    "waiting": self._admitted - self._running, "rejected": self._rejected}

    def retry_after_s(self) -> int:
        """Seconds until a slot is likely free: the admitted jobs' expected run time per worker."""
        estimate = math.ceil(max(1, self._admitted) * self._mean_s / self.workers)
        return max(1, min(self.max_retry_after_s, estimate))

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on a worker thread; raises :class:`PoolFull` at once when the queue is full."""
        with self._lock:
            if self._admitted >= self.capacity:
                self._rejected += 1
                raise PoolFull(self._running, self._admitted - self._running, self.retry_after_s())
            self._admitted += 1
        try:
            future = self._executor.submit(self._timed, function, args)
        except RuntimeError:  # the executor was shut down
            self._release(None)
            raise
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _timed(self, function: Callable[..., T], args: tuple[Any, ...]) -> T:
        with self._lock:
            self._running += 1
        started = time.perf_counter()
        try:
            return function(*args)
        finally:
            elapsed = time.perf_counter() - started
            with self._lock:
                self._running -= 1
                self._mean_s = 0.8 * self._mean_s + 0.2 * elapsed

    def _release(self, _: Future | None) -> None:
        with self._lock:
            self._admitted -= 1

    def shutdown(self) -> None:
        """Drop queued jobs and stop the threads once the running ones are done (does not wait)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
