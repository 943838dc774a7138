"""Handles of generations running in an engine's scheduler (:meth:`tova.Engine.submit`)."""
from __future__ import annotations

import asyncio
import time
import weakref
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Dict, Iterator, List, Optional, Tuple

from . import _check

if TYPE_CHECKING:  # pragma: no cover
    from . import _core

__all__ = ["Handle"]


def _core_failed() -> BaseException:
    from . import TovaError

    return TovaError("the generation failed (its error was raised to the thread that took it first)")

# Handles alive, for the fork hook (tova/engine.py: _after_fork_in_child).
_LIVE_HANDLES: "weakref.WeakSet[Handle]" = weakref.WeakSet()

_PIECE, _TIMEOUT, _DONE = 0, 1, 2
_POLL = 0.1  # seconds between Ctrl-C checks while waiting


class Handle:
    """One generation submitted to an :class:`tova.Engine`; it runs beside the engine's other
    sequences (continuous batching) and streams its text.

    Iterate it (``for piece in handle``) or, in asyncio code, ``async for piece in handle``;
    :meth:`result` returns the whole text. Leaving a loop over it (``break``) does not stop it:
    a later loop or :meth:`result` goes on where the last one left, as with a file. :meth:`cancel`
    stops it at the scheduler's next step (which frees its sequence); so do dropping an
    unfinished handle and cancelling the asyncio task that is waiting in ``async for``. A generation that
    failed (a policy's error, say) raises that error to every call that waits for it. Waiting runs
    the scheduler's steps in the waiting thread when no other thread does, so no background
    thread is needed. Ctrl-C while waiting cancels the request and raises ``KeyboardInterrupt``.
    """

    def __init__(self, core: "_core.Request", on_finish: Optional[Callable[["Handle"], None]] = None) -> None:
        self._core = core
        self._on_finish = on_finish
        self._done = False
        self._error: Optional[BaseException] = None  # the generation's failure, raised every time
        _LIVE_HANDLES.add(self)

    def _left_in_parent(self, stand_in: Any) -> None:
        """In a child made by fork() while a thread was inside tova: every use raises the
        stand-in's error; the core request is kept, never destroyed."""
        from . import _core

        _core._leak(self._core)
        self._core = stand_in
        try:
            stand_in.next
        except RuntimeError as e:
            self._error = e
        self._done = True  # (nothing to cancel when dropped)

    def _take(self, timeout: float) -> Tuple[int, str]:
        """One wait on the core request; its failure is kept and raised to every later call
        (the core hands it out once), a Ctrl-C is not (it is this caller's)."""
        if self._error is not None:
            raise self._error
        try:
            state, piece = self._core.next(timeout)
        except KeyboardInterrupt:
            raise
        except BaseException as e:
            self._error = e
            raise
        if state == _DONE and self._core.finish_reason == "error":
            # Failed, its error taken by another thread's wait a moment ago.
            self._error = self._error or _core_failed()
            raise self._error
        return state, piece

    # ---- the text ---------------------------------------------------------------------------
    def next(self, timeout: Optional[float] = None) -> Optional[str]:
        """The next piece of text; ``""`` when the generation has finished; ``None`` when
        ``timeout`` seconds passed first."""
        if timeout is not None:
            timeout = _check.number("timeout", timeout, minimum=0)
        if self._error is not None:
            raise self._error
        if self._done:
            return ""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = _POLL if deadline is None else max(0.0, min(_POLL, deadline - time.monotonic()))
            state, piece = self._take(step)
            if state == _PIECE:
                return piece
            if state == _DONE:
                self._finish()
                return ""
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def __iter__(self) -> Iterator[str]:
        while True:
            piece = self.next()
            if piece == "" and self._done:
                return
            if piece:
                yield piece

    async def _pieces(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        try:
            while True:
                state, piece = await loop.run_in_executor(None, self._take, 0.25)
                if state == _PIECE:
                    yield piece
                elif state == _DONE:
                    self._finish()
                    return
        except asyncio.CancelledError:  # the task waiting for it was cancelled: no one reads on
            if not self._done:          # (the wait in the executor may have taken a piece)
                self._abandon()
            raise

    def __aiter__(self) -> AsyncIterator[str]:
        return self._pieces()

    def result(self) -> str:
        """Waits for the end and returns the text not yet taken from the handle."""
        return "".join(self)

    def cancel(self) -> None:
        """Stops the generation at the scheduler's next step (finish reason ``"cancelled"``)."""
        self._core.cancel()

    # ---- facts ------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """True when the generation has ended and every piece was taken."""
        if not self._done and self._core.finished:
            if self._core.finish_reason == "error":
                return True  # (its error is raised by the next wait, not swallowed here)
            self._finish()
        return self._done

    @property
    def finish_reason(self) -> str:
        """``"stop"``, ``"length"``, ``"cancelled"``, ``"error"``, or ``"none"`` while running."""
        return str(self._core.finish_reason)

    @property
    def tokens(self) -> List[int]:
        """The generated token ids so far."""
        return list(self._core.tokens)

    def logprobs(self, start: int = 0) -> List[Tuple[int, float, List[Tuple[int, float]]]]:
        """Per generated token from index ``start`` on: ``(token, logprob, top)``, where
        ``logprob`` is the token's log-probability under the model (log-softmax of its logits,
        before any sampling filter) and ``top`` the most likely ``(token, logprob)`` pairs at that
        position; empty unless the request was submitted with ``logprobs=k``."""
        return [(int(t), float(lp), [(int(a), float(b)) for a, b in top])
                for t, lp, top in self._core.logprobs(_check.integer("start", start, minimum=0))]

    @property
    def stats(self) -> Dict[str, Any]:
        """Prompt and completion tokens, seconds, tokens/s, finish reason and the sequence used."""
        return dict(self._core.stats)

    @property
    def seq(self) -> int:
        """The engine sequence it runs in (-1 while queued)."""
        return int(self._core.seq)

    def __reduce__(self) -> Any:
        raise TypeError("a tova.Handle cannot be pickled or copied (it is a generation running "
                        "in this process's engine)")

    def _abandon(self) -> None:
        """The reader left before the end (``break`` out of a stream, a cancelled asyncio task):
        the generation is cancelled, and what it did so far is the last statistics, as a chat
        stream's are."""
        self.cancel()
        if self._on_finish is not None:
            self._on_finish(self)

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            if self._on_finish is not None:
                self._on_finish(self)
