"""Perplexity of a model reading a text through its fixed-memory KV cache.

Two ways to read the text (what is scored is stated exactly, so numbers can be compared):

* **streaming** (``context=None``, the default): the whole token sequence goes through one
  sequence of the engine, from an empty cache, exactly as in decoding: with an evicting policy and
  ``prefill="exact"`` the logits of token *i* are those it would get if the text were fed one token
  at a time, the policy evicting after every token (spec §5). Every token after the first is
  scored: the prediction at position *i* of token *i + 1*, for *i* = 0 .. n-2.
* **windows** (``context=N``): the tokens are cut into consecutive non-overlapping windows of N
  tokens (``floor(n / N)`` of them, at most ``chunks``; a remainder is not read), each read from an
  empty cache; where the model adds BOS, the first token of every window is replaced by BOS. The
  predictions at window positions ``score_from`` .. N-2 are scored (tokens ``score_from + 1`` ..
  N-1), ``score_from`` defaulting to N // 2 (0 for N = 2). With ``policy="full"`` this is exactly what
  ``llama-perplexity -c N --chunks K`` computes (255 tokens scored per 512-window).
  With ``stride=S`` (1 <= S < N) windows start every S tokens instead (they overlap) and each
  scores only its last S tokens, so every token after the first window's context is scored once
  with at least N - S tokens before it in its window (``score_from`` then defaults to N - S - 1).

The result is the mean negative log-likelihood (natural log, log-softmax in float64 sums as
llama.cpp does) over the scored tokens, PPL = exp(mean), and llama.cpp's standard error: the
standard deviation of the per-token NLL over sqrt(n - 1) (population variance), propagated to PPL
as ``ppl * se``.

The measurement itself (plan, per-row NLL, statistics) is the core's ``tova::measure_perplexity``
(cpp/src/perplexity.h), which ``tova perplexity`` runs too: this module opens the engine, shows
progress and wraps the result.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _check, _core

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine
    from .policy import Policy

__all__ = ["PerplexityResult", "perplexity", "nll_stats"]


@dataclass(frozen=True)
class PerplexityResult:
    """What :func:`perplexity` measured.

    Attributes:
        ppl: exp(mean NLL) over the scored tokens.
        stderr: llama.cpp's ``±``: the standard error of the mean NLL propagated to PPL.
        nll: mean negative log-likelihood per scored token (nats).
        nll_stderr: standard error of ``nll``.
        n_scored: tokens whose probability was scored.
        n_tokens: tokens the model read (scored or context only; overlapping windows count again).
        n_windows: windows read (1 when streaming).
        seconds: wall time of the evaluation (model and scoring; not tokenization or loading).
        tokens_per_second: ``n_tokens / seconds``.
        policy, kv_size, context, stride, score_from, prefill: the settings it ran with
            (``kv_size`` is None for the full policy).
        nlls: the per-token NLLs in reading order (float64).
    """

    ppl: float
    stderr: float
    nll: float
    nll_stderr: float
    n_scored: int
    n_tokens: int
    n_windows: int
    seconds: float
    tokens_per_second: float
    policy: str
    kv_size: Optional[int]
    context: Optional[int]
    stride: Optional[int]
    score_from: int
    prefill: str
    nlls: np.ndarray = field(repr=False, compare=False)

    def __str__(self) -> str:
        return (f"PPL = {self.ppl:.4f} +/- {self.stderr:.5f} ({self.n_scored} tokens scored, "
                f"{self.n_tokens} read, {self.tokens_per_second:.1f} tokens/s)")


def nll_stats(nlls: Union[Sequence[float], np.ndarray]) -> Tuple[float, float, float, float]:
    """(ppl, ppl_stderr, mean_nll, nll_stderr) as llama-perplexity prints them: the mean NLL,
    its standard error sqrt(var / (n - 1)) with the population variance, and ``ppl * se``
    (the core's statistics, as :func:`perplexity` reports them). ValueError when empty."""
    if isinstance(nlls, (str, bytes)) or not isinstance(nlls, (Sequence, np.ndarray)):
        raise TypeError(f"nlls must be a sequence of numbers, got {type(nlls).__name__}")
    try:
        x = np.asarray(nlls, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise TypeError(f"nlls must be a sequence of numbers: {e}") from None
    if x.size == 0:
        raise ValueError("nlls is empty: no tokens were scored")
    return tuple(_core.nll_stats(x.tolist()))  # type: ignore[return-value]


# ---- which engine to read with ----------------------------------------------------------------


def _open_engine(engine_or_model: Any, *, policy: "Union[None, str, Policy]",
                 kv_size: Optional[int], prefill: str, n_ctx_needed: int,
                 options: dict) -> "Tuple[Engine, bool]":
    """The given Engine when its settings fit the request, else a new one on the same model
    (second value: True when this function opened it and must close it)."""
    from .engine import Engine

    if isinstance(engine_or_model, Engine):
        e = engine_or_model
        want_policy = e.policy if policy is None else policy
        name = want_policy if isinstance(want_policy, str) else getattr(want_policy, "name", "plugin")
        same = (isinstance(want_policy, str) and name == e.policy and not options
                and prefill == getattr(e, "prefill", prefill))
        if same and name == "full":
            same = e.n_ctx >= n_ctx_needed
        elif same:
            same = kv_size is None or kv_size == e.kv_size
        if same:
            return e, False
        # The settings this Engine was made with carry over where it records them.
        base = {k: getattr(e, k) for k in ("kv_type_k", "kv_type_v", "kv_hadamard", "kv_lo_type", "kv_hi_size",
                                           "float_activations", "chunk", "positions", "backend")
                if hasattr(e, k)}
        # The sinks as given: one not given is the new policy's default, not the old one's.
        base["n_sink"] = e._n_sink_given
        base["n_threads"] = int(e._e.n_threads)
        # An option given overrides what it covers: kv_type both halves, device the backend.
        if "kv_type" in options:
            for k in ("kv_type_k", "kv_type_v"):
                if k not in options:
                    base.pop(k, None)
        if "device" in options:
            base.pop("backend", None)
        base.update(options)
        model: Any = e.path
        kv: Optional[int] = e.kv_size if kv_size is None else kv_size
    else:
        base = dict(options)
        model = engine_or_model
        want_policy = "full" if policy is None else policy
        name = want_policy if isinstance(want_policy, str) else getattr(want_policy, "name", "plugin")
        kv = kv_size  # None: the engine's default
    kw = dict(base, policy=want_policy, prefill=prefill)
    if name == "full":
        kw["n_ctx"] = max(int(kw.get("n_ctx", 0) or 0), n_ctx_needed)
    elif kv is not None:
        kw["kv_size"] = kv
    return Engine(model, **kw), True


# ---- progress -----------------------------------------------------------------------------------


class _Progress:
    """tqdm when installed; else a one-line counter on a terminal's stderr; else nothing."""

    def __init__(self, enabled: bool, desc: str):
        self.bar: Any = None
        self.line = False
        self.enabled, self.desc, self.started = enabled, desc, False
        self.total, self.done, self.t0 = 0, 0, time.perf_counter()

    def _start(self, total: int) -> None:
        self.started, self.total = True, total
        if not self.enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self.line = sys.stderr.isatty()
            return
        self.bar = tqdm(total=total, unit="tok", desc=self.desc, leave=False, dynamic_ncols=True)

    def __call__(self, done: int, total: int, nll_sum: float, n_scored: int) -> None:
        """The core's progress callback: after each piece read."""
        if not self.started:
            self._start(total)
        n, self.done = done - self.done, done
        ppl = math.exp(nll_sum / n_scored) if n_scored else float("nan")
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(ppl=f"{ppl:.4f}", refresh=False)
        elif self.line:
            rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
            sys.stderr.write(f"\rperplexity: {self.done}/{self.total} tokens, PPL {ppl:.4f}, "
                             f"{rate:.1f} tokens/s ")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.line:
            sys.stderr.write("\n")


# ---- the measurement ----------------------------------------------------------------------------


def perplexity(
    engine_or_model: "Union[Engine, str, os.PathLike[str]]",
    text_or_tokens: Union[str, Sequence[int], np.ndarray],
    *,
    kv_size: Optional[int] = None,
    policy: "Union[None, str, Policy]" = None,
    prefill: str = "exact",
    context: Optional[int] = None,
    stride: Optional[int] = None,
    chunks: Optional[int] = None,
    score_from: Optional[int] = None,
    add_bos: Optional[bool] = None,
    progress: bool = True,
    **engine_options: Any,
) -> PerplexityResult:
    """Perplexity of the model on a text read through its fixed KV cache (see the module doc
    for exactly what is read and scored).

    Args:
        engine_or_model: an :class:`tova.Engine`, or a GGUF path / registry name.
        text_or_tokens: text (tokenized with the model's BOS setting) or token ids.
        kv_size, policy: the cache to read through. ``None``: the engine's own; with a model
            path, ``"full"`` and the default ``kv_size``. An Engine whose settings differ (or a full-cache Engine
            whose ``n_ctx`` is too small) is not changed: a new one is opened on the same model.
        prefill: ``"exact"`` (the default: as decoding token by token) or ``"chunked"``.
        context: window length N (llama-perplexity's ``-c``); None: read the text as one stream.
        stride: with ``context``, the distance between window starts (overlapping windows).
        chunks: with ``context``, read at most this many windows (llama-perplexity's
            ``--chunks``).
        score_from: first scored prediction position in each window (default N // 2 for
            windows, N - stride - 1 with ``stride``, 0 when streaming).
        add_bos: start a text with BOS, and replace each window's first token by BOS;
            default: where the model adds BOS (llama-perplexity's behaviour).
        progress: show a progress bar (tqdm when installed).
        **engine_options: passed to :class:`tova.Engine` when a new engine is opened
            (``kv_type``, ``n_threads``, ``float_activations``, ``chunk``, ``n_sink`` ...).
    """
    from .engine import Engine

    if _check.text("prefill", prefill) not in ("exact", "chunked"):
        raise ValueError(f"prefill must be 'exact' or 'chunked', got {prefill!r}")
    # The settings' values are checked by the core; their types here.
    _check.optional_integer("kv_size", kv_size, minimum=1)
    context, stride, chunks, score_from = (
        _check.optional_integer(k, v) for k, v in (("context", context), ("stride", stride),
                                                   ("chunks", chunks), ("score_from", score_from)))
    add_bos = _check.optional_boolean("add_bos", add_bos)
    progress = _check.boolean("progress", progress)
    _check.policy(policy)
    if not isinstance(engine_or_model, Engine):
        _check.path("engine_or_model", engine_or_model)

    # Tokens first: text needs the model's tokenizer (a model path gets a throwaway engine).
    tokens: Optional[List[int]] = None
    value = _check.prompt_value(text_or_tokens, "text_or_tokens")
    text = value if isinstance(value, str) else ""
    if not isinstance(value, str):  # (in the vocabulary: checked once the model is known)
        tokens = _check.token_ids("text_or_tokens", value, _check.INT32_MAX)
    src: Any = engine_or_model
    probe: Optional[Engine] = None
    try:
        if tokens is None:
            if isinstance(src, Engine):
                tokens = src.tokenize(text, add_bos=add_bos)
            else:
                probe = Engine(src, policy="full", n_ctx=1, n_threads=1)
                src = probe.path
                tokens = probe.tokenize(text, add_bos=add_bos)
                probe.close()
                probe = None
        n_ctx_needed = max(1, context if context is not None else len(tokens))
        engine, opened = _open_engine(src, policy=policy, kv_size=kv_size, prefill=prefill,
                                      n_ctx_needed=n_ctx_needed, options=engine_options)
        try:
            _check.token_ids("text_or_tokens", tokens, engine.n_vocab)
            return _measure(engine, tokens, context=context, stride=stride, chunks=chunks,
                            score_from=score_from, add_bos=add_bos, progress=progress,
                            prefill=prefill)
        finally:
            if opened:
                engine.close()
    finally:
        if probe is not None:
            probe.close()


def _measure(engine: "Engine", tokens: List[int], *, context: Optional[int],
             stride: Optional[int], chunks: Optional[int], score_from: Optional[int],
             add_bos: Optional[bool], progress: bool, prefill: str) -> PerplexityResult:
    bar = _Progress(progress, f"perplexity {engine.policy}")
    try:
        r = _core.perplexity(engine._e, tokens, context=context, stride=stride, chunks=chunks,
                             score_from=score_from,
                             add_bos=None if add_bos is None else bool(add_bos),
                             progress=bar if progress else None)
    finally:
        bar.close()
    seconds, total = float(r["seconds"]), int(r["n_tokens"])
    return PerplexityResult(
        ppl=float(r["ppl"]), stderr=float(r["stderr"]), nll=float(r["nll"]),
        nll_stderr=float(r["nll_stderr"]), n_scored=int(r["n_scored"]), n_tokens=total,
        n_windows=int(r["n_windows"]), seconds=seconds,
        tokens_per_second=total / seconds if seconds > 0 else float("inf"),
        policy=engine.policy, kv_size=None if engine.policy == "full" else engine.kv_size,
        context=context, stride=stride, score_from=int(r["score_from"]), prefill=prefill,
        nlls=r["nlls"])
