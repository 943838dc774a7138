"""The engine behind the HTTP routes: admission (a bounded queue), one engine sequence per
choice, and the bridge from the engine's blocking handles to asyncio.

Every choice of every request is one :meth:`tova.Engine.submit` (continuous batching: they run
together in the engine's ``n_seq`` sequences; the rest wait in the engine's queue). A thread of a
dedicated pool iterates the choice's :class:`tova.Handle` (waiting threads drive the engine's
scheduler, see handle.py) and posts its pieces to the event loop. At most ``n_seq + max_queue``
choices are admitted at once; beyond that a request is answered 429 at once instead of waiting.
Cancelling a choice (the client went away) stops it at the scheduler's next step and frees its
sequence.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

from .. import _check
from ..engine import Engine
from ..handle import Handle
from .errors import APIError
from .metrics import Metrics

__all__ = ["ServeConfig", "Service", "Batch", "Choice", "cache_tokens", "default_max_prompt_tokens"]

# What a batch's queue carries: (choice index, a text piece | None at the end | an exception).
Event = Tuple[int, Union[str, None, BaseException]]


class Stopped(asyncio.CancelledError):
    """A choice the server's shutdown ended (Service.stop_generations): the endpoints answer it
    as they answer their own cancellation at shutdown (a 503; a stream's last event)."""


_MAX_PROMPT_TOKENS = 32768


@dataclass
class ServeConfig:
    """Settings of ``tova serve`` beyond the engine's own.

    Attributes:
        model_id: the name clients use in ``"model"`` (``/v1/models`` lists it).
        max_queue: choices that may wait for a sequence; more are answered 429.
        max_prompt_tokens: the longest prompt a request may send (tokens); 0 = no limit. With
            policy ``full`` a prompt must also fit the engine's ``n_ctx``.
        api_key: when set, ``/v1/*`` requires ``Authorization: Bearer <api_key>``.
        default_max_tokens: ``max_tokens`` of a chat request that gives none.
        max_tokens_cap: the largest ``max_tokens`` accepted.
        max_body_bytes: the largest request body accepted (413 beyond).
        max_requests: HTTP requests handled at once (a stream until it ends); more are answered
            503 with an OpenAI-shaped error (``tova serve --max-connections``).
        cors_origins: web origins whose pages may call the API from a browser (CORS; ``"*"``:
            any); empty: none (no CORS headers).
        allowed_hosts: the names a request's ``Host`` header may give (any port); others are
            answered 421. Empty: any. ``tova serve`` on a loopback address allows only
            ``localhost``, ``127.0.0.1`` and ``::1``, so that a web page whose name resolves to
            this machine (DNS rebinding) cannot read the API.
    """
    model_id: str
    max_queue: int = 64
    max_prompt_tokens: int = _MAX_PROMPT_TOKENS
    api_key: Optional[str] = None
    default_max_tokens: int = 1024
    max_tokens_cap: int = 1 << 20
    max_body_bytes: int = 8 << 20
    max_requests: int = 1024
    cors_origins: Tuple[str, ...] = ()
    allowed_hosts: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _check.text("model_id", self.model_id):
            raise ValueError("model_id is empty")
        _check.integer("max_queue", self.max_queue, minimum=0)
        _check.integer("max_prompt_tokens", self.max_prompt_tokens, minimum=0)
        if self.api_key is not None and not _check.text("api_key", self.api_key):
            raise ValueError("api_key is empty (None: no key)")
        _check.integer("max_tokens_cap", self.max_tokens_cap, minimum=1)
        _check.integer("default_max_tokens", self.default_max_tokens, minimum=1,
                       maximum=self.max_tokens_cap)
        _check.integer("max_body_bytes", self.max_body_bytes, minimum=1)
        _check.integer("max_requests", self.max_requests, minimum=1)
        if isinstance(self.cors_origins, str) or not all(
                isinstance(o, str) and o for o in self.cors_origins):
            raise TypeError("cors_origins must be a sequence of origins (strings), e.g. ('https://example.com',)")
        self.cors_origins = tuple(self.cors_origins)
        if isinstance(self.allowed_hosts, str) or not all(isinstance(h, str) and h for h in self.allowed_hosts):
            raise TypeError("allowed_hosts must be a sequence of host names (strings), e.g. ('localhost',)")
        self.allowed_hosts = tuple(h.lower() for h in self.allowed_hosts)


def cache_tokens(engine: Engine) -> Tuple[str, int]:
    """The tokens a sequence's KV store holds per layer and the setting that says so:
    ``("n_ctx", n)`` for policy ``full`` (it ignores ``kv_size``), else ``("kv_size", n)``."""
    if engine.policy == "full":
        return "n_ctx", engine.n_ctx
    return "kv_size", engine.kv_size


def default_max_prompt_tokens(engine: Engine) -> int:
    """``max_prompt_tokens`` when none is given: 32768, or less where policy ``full``'s cache
    (``n_ctx``) takes less."""
    name, size = cache_tokens(engine)
    return min(_MAX_PROMPT_TOKENS, size) if name == "n_ctx" else _MAX_PROMPT_TOKENS


class Choice:
    """One generation of a request, running in one engine sequence."""

    def __init__(self, service: "Service", index: int, handle: Handle, prompt_tokens: int) -> None:
        self.index = index
        self.handle = handle
        self.prompt_tokens = prompt_tokens
        self.cached_tokens = 0
        self.completion_tokens = 0
        self.finish_reason = "none"
        self._service = service

    def drain(self, post: Callable[[Event], None]) -> None:
        """Runs in a pool thread: iterates the handle, posting pieces, then None (or the error)."""
        try:
            for piece in self.handle:
                post((self.index, piece))
            self._finished()
            post((self.index, None))
        except BaseException as e:  # noqa: BLE001 - handed to the event loop
            self.finish_reason = "error"
            post((self.index, e))
        finally:
            self._service._release(self)

    def _finished(self) -> None:
        h = self.handle
        stats = h.stats
        self.finish_reason = h.finish_reason
        self.prompt_tokens = int(stats.get("prompt_tokens", self.prompt_tokens))
        self.cached_tokens = int(stats.get("cached_tokens", 0))
        self.completion_tokens = int(stats["answer_tokens"])  # (not the end-of-turn token, as OpenAI counts)
        evictions = int(stats.get("evictions", 0))  # its sequence's, when it finished
        self._service.metrics.generation(self.prompt_tokens, self.completion_tokens, evictions,
                                         self.finish_reason == "cancelled")


class Batch:
    """The ``n`` choices of one request, their pieces arriving on one asyncio queue."""

    def __init__(self, choices: List[Choice], queue: "asyncio.Queue[Event]", service: "Service") -> None:
        self.choices = choices
        self._queue = queue
        self._service = service

    async def events(self) -> AsyncIterator[Tuple[int, Optional[str]]]:
        """Yields ``(index, piece)`` as pieces come, and ``(index, None)`` when a choice ends;
        returns when all have ended. A failed choice raises its error here; one the server's
        shutdown ended raises :class:`Stopped`."""
        open_ = len(self.choices)
        while open_:
            index, item = await self._queue.get()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                if self._service.stopping and self.choices[index].finish_reason == "cancelled":
                    raise Stopped("the server is shutting down")
                open_ -= 1
            yield index, item

    def cancel(self) -> None:
        """Stops every choice still running (their sequences free at the next step)."""
        for c in self.choices:
            c.handle.cancel()


class Service:
    """The engine, the admission count and the pool of threads that wait on handles."""

    def __init__(self, engine: Engine, config: ServeConfig) -> None:
        self.engine = engine
        self.config = config
        self.metrics = Metrics()
        self.capacity = engine.n_seq + max(0, config.max_queue)
        self._lock = threading.Lock()
        self._live: Set[Choice] = set()
        self._admitted = 0
        self.stopping = False  # stop_generations() was called: no new generation starts
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.capacity + 4, thread_name_prefix="tova-serve")

    # ---- admission --------------------------------------------------------------------------------
    def check_fits(self, n: int, param: str) -> None:
        """A 400 naming ``param`` when a request asks for more generations than the server can
        ever hold at once (waiting would not help: not the 429 of a full queue)."""
        if n > self.capacity:
            raise APIError(400, f"the request asks for {n} generations; this server runs or queues at "
                           f"most {self.capacity} at once ({self.engine.n_seq} sequences, queue of "
                           f"{self.config.max_queue})", param=param, code="invalid_value")

    def _reserve(self, n: int) -> None:
        self.check_fits(n, "n")
        with self._lock:
            if self._admitted + n > self.capacity:
                busy = self._admitted
                self.metrics.rejected_full += 1
                raise APIError(
                    429,
                    f"the server is full: {busy} generations are running or waiting "
                    f"({self.engine.n_seq} sequences, queue of {self.config.max_queue}); "
                    "retry later", type="rate_limit_error", code="queue_full",
                    headers={"Retry-After": "1"})
            self._admitted += n

    def _unreserve(self, n: int) -> None:
        with self._lock:
            self._admitted -= n

    def _release(self, choice: Choice) -> None:
        with self._lock:
            if choice in self._live:
                self._live.discard(choice)
                self._admitted -= 1

    def start(self, prompts: Sequence[List[int]], fields: Callable[[int], Dict[str, Any]]) -> Batch:
        """Submits one choice per prompt (``fields(i)``: the submit keywords of choice i) and
        returns them as a :class:`Batch`; 429 (:class:`APIError`) when the queue is full."""
        n = len(prompts)
        if self.stopping:
            raise APIError(503, "the server is shutting down", type="server_error", code="server_shutting_down")
        self._reserve(n)
        loop = asyncio.get_running_loop()
        queue: "asyncio.Queue[Event]" = asyncio.Queue()
        choices: List[Choice] = []
        try:
            for i, ids in enumerate(prompts):
                handle = self.engine.submit(ids, **fields(i))
                choices.append(Choice(self, i, handle, len(ids)))
        except (ValueError, TypeError) as e:
            for c in choices:
                c.handle.cancel()
            self._unreserve(n)
            raise APIError(400, str(e)) from e
        except BaseException:
            for c in choices:
                c.handle.cancel()
            self._unreserve(n)
            raise
        with self._lock:
            self._live.update(choices)

        def post(event: Event) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the loop has closed (shutdown)
                pass

        for c in choices:
            self._pool.submit(c.drain, post)
        return Batch(choices, queue, self)

    # ---- facts ---------------------------------------------------------------------------------------
    def prompt_limit(self) -> Tuple[int, str]:
        """The most tokens a prompt may have (0: no limit) and the option that sets it:
        ``--max-prompt-tokens``, or ``--n-ctx`` where policy ``full``'s cache takes no more."""
        limit, option = self.config.max_prompt_tokens, "--max-prompt-tokens"
        name, size = cache_tokens(self.engine)
        if name == "n_ctx" and (not limit or size <= limit):
            limit, option = size, "--n-ctx"
        return limit, option

    def occupancy(self) -> Tuple[int, int]:
        """(choices holding a sequence, choices waiting for one)."""
        with self._lock:
            live = list(self._live)
        active = sum(1 for c in live if c.handle.seq >= 0)
        return active, len(live) - active

    def gauges(self) -> Dict[str, Tuple[str, float]]:
        active, waiting = self.occupancy()
        e = self.engine
        return {
            "tova_active_sequences": ("Engine sequences running a generation.", active),
            "tova_queued_requests": ("Generations waiting for a free sequence.", waiting),
            "tova_sequences": ("Engine sequences (n_seq).", e.n_seq),
            "tova_queue_capacity": ("Generations that may wait (--max-queue).", self.config.max_queue),
            "tova_kv_bytes": ("Bytes of the KV stores of all sequences (fixed at start).", e.kv_bytes),
            "tova_kv_size": ("Tokens a sequence's KV store holds per layer (n_ctx with policy "
                             "full, else kv_size).", cache_tokens(e)[1]),
        }

    def stop_generations(self) -> None:
        """The server stops (its graceful shutdown's time is nearly up): every generation still
        running ends now, so that its answer completes before the server cuts the connection;
        new ones are refused (503). Any thread."""
        self.stopping = True
        with self._lock:
            live = list(self._live)
        for c in live:
            c.handle.cancel()

    def close(self) -> None:
        with self._lock:
            live = list(self._live)
        for c in live:
            c.handle.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
