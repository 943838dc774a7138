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
  N-1), ``score_from`` defaulting to N // 2. With ``policy="full"`` this is exactly what
  ``llama-perplexity -c N --chunks K`` computes (255 tokens scored per 512-window).
  With ``stride=S`` (1 <= S < N) windows start every S tokens instead (they overlap) and each
  scores only its last S tokens, so every token after the first window's context is scored once
  with at least N - S tokens before it in its window (``score_from`` then defaults to N - S - 1).

The result is the mean negative log-likelihood (natural log, log-softmax in float64 sums as
llama.cpp does) over the scored tokens, PPL = exp(mean), and llama.cpp's standard error: the
standard deviation of the per-token NLL over sqrt(n - 1) (population variance), propagated to PPL
as ``ppl * se``.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

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


def nll_stats(nlls: np.ndarray) -> Tuple[float, float, float, float]:
    """(ppl, ppl_stderr, mean_nll, nll_stderr) as llama-perplexity prints them."""
    x = np.asarray(nlls, dtype=np.float64)
    n = x.size
    if n == 0:
        raise ValueError("no tokens were scored")
    mean = float(x.mean())
    # llama.cpp: sqrt((E[x^2] - E[x]^2) / (n - 1)), i.e. the sample std over sqrt(n).
    var = float((x * x).mean() - mean * mean)
    se = math.sqrt(var / (n - 1)) if n > 1 and var > 0 else 0.0
    ppl = math.exp(mean)
    return ppl, ppl * se, mean, se


def _row_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row: exp in float32 after subtracting the max, sums in
    float64 (llama.cpp's precision)."""
    m = logits.max(axis=1)
    e = np.exp(logits - m[:, None])
    lse = np.log(e.sum(axis=1, dtype=np.float64)) + m.astype(np.float64)
    return lse - logits[np.arange(logits.shape[0]), targets].astype(np.float64)


# ---- the plan: which tokens each window reads and which predictions it scores ----------------


@dataclass(frozen=True)
class _Window:
    start: int        # index of the window's first token in the token list
    length: int       # tokens read
    first_row: int    # first scored prediction (window-relative position)
    replace_bos: bool


def _plan(n: int, context: Optional[int], stride: Optional[int], chunks: Optional[int],
          score_from: Optional[int], bos: bool) -> Tuple[List[_Window], int]:
    if context is None:
        if stride is not None:
            raise ValueError("stride needs context (the window length)")
        if chunks is not None:
            raise ValueError("chunks needs context (it caps the number of windows)")
        first = 0 if score_from is None else _int_arg("score_from", score_from, 0)
        if n < first + 2:
            raise ValueError(f"the text has {n} tokens: at least {first + 2} are needed to score one")
        return [_Window(0, n, first, False)], first
    N = _int_arg("context", context, 2)
    if stride is None:
        S = N
        first = N // 2 if score_from is None else _int_arg("score_from", score_from, 0)
    else:
        S = _int_arg("stride", stride, 1)
        if S >= N:
            raise ValueError(f"stride must be smaller than context {N} (or None for "
                             f"non-overlapping windows), got {S}")
        first = N - S - 1 if score_from is None else _int_arg("score_from", score_from, 0)
    if first > N - 2:
        raise ValueError(f"score_from must be at most context - 2 = {N - 2}, got {first}")
    if n < N:
        raise ValueError(f"the text has {n} tokens, fewer than one window of context={N}")
    starts = list(range(0, n - N + 1, S))
    if chunks is not None:
        starts = starts[:_int_arg("chunks", chunks, 1)]
    wins = []
    for k, s in enumerate(starts):
        # Overlapping windows after the first score only the tokens no window scored before.
        f = first if (k == 0 or stride is None) else max(first, N - S - 1)
        wins.append(_Window(s, N, f, bos))
    return wins, first


def _int_arg(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


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
        name = want_policy if isinstance(want_policy, str) else want_policy.name
        same = (isinstance(want_policy, str) and name == e.policy and not options
                and prefill == getattr(e, "prefill", prefill))
        if same and name == "full":
            same = e.n_ctx >= n_ctx_needed
        elif same:
            same = kv_size is None or kv_size == e.kv_size
        if same:
            return e, False
        # The settings this Engine was made with carry over where it records them.
        base = {k: getattr(e, k) for k in ("kv_type", "float_activations", "chunk", "n_sink",
                                           "positions") if hasattr(e, k)}
        base["n_threads"] = int(e._e.n_threads)
        base.update(options)
        model: Any = e.path
        kv = e.kv_size if kv_size is None else kv_size
    else:
        base = dict(options)
        model = engine_or_model
        want_policy = "full" if policy is None else policy
        name = want_policy if isinstance(want_policy, str) else want_policy.name
        kv = 512 if kv_size is None else kv_size
    kw = dict(base, policy=want_policy, prefill=prefill)
    if name == "full":
        kw["n_ctx"] = max(int(kw.get("n_ctx", 0) or 0), n_ctx_needed)
    else:
        kw["kv_size"] = kv
    return Engine(model, **kw), True


# ---- progress -----------------------------------------------------------------------------------


class _Progress:
    """tqdm when installed; else a one-line counter on a terminal's stderr; else nothing."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.bar = None
        self.line = False
        self.total, self.done, self.t0 = total, 0, time.perf_counter()
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self.line = sys.stderr.isatty()
            return
        self.bar = tqdm(total=total, unit="tok", desc=desc, leave=False, dynamic_ncols=True)

    def update(self, n: int, nll_sum: float, n_scored: int) -> None:
        self.done += n
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


def _pieces(w: _Window, chunk: int, split_at_first: bool) -> Iterator[Tuple[int, int]]:
    """[a, b) window-relative pieces: the engine's chunks, plus a cut where scoring starts so
    that the unscored prefix is read without computing its logits."""
    cuts = set(range(0, w.length, chunk))
    if split_at_first and 0 < w.first_row < w.length:
        cuts.add(w.first_row)
    cuts = sorted(cuts) + [w.length]
    for a, b in zip(cuts[:-1], cuts[1:]):
        yield a, b


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
            path, ``"full"`` and 512. An Engine whose settings differ (or a full-cache Engine
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
    if prefill not in ("exact", "chunked"):
        raise ValueError(f"prefill must be 'exact' or 'chunked', got {prefill!r}")
    if kv_size is not None:
        _int_arg("kv_size", kv_size, 1)
    from .engine import Engine

    # Tokens first: text needs the model's tokenizer (a model path gets a throwaway engine).
    tokens: Optional[List[int]] = None
    if not isinstance(text_or_tokens, str):
        tokens = [int(t) for t in np.asarray(text_or_tokens).reshape(-1).tolist()]
    src: Any = engine_or_model
    probe: Optional[Engine] = None
    try:
        if tokens is None:
            if isinstance(src, Engine):
                tokens = src.tokenize(text_or_tokens, add_bos=add_bos)
            else:
                probe = Engine(src, policy="full", n_ctx=1, n_threads=1)
                src = probe.path
                tokens = probe.tokenize(text_or_tokens, add_bos=add_bos)
                probe.close()
                probe = None
        n_ctx_needed = max(1, context if context is not None else len(tokens))
        engine, opened = _open_engine(src, policy=policy, kv_size=kv_size, prefill=prefill,
                                      n_ctx_needed=n_ctx_needed, options=engine_options)
        try:
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
    info = engine.model_info
    bos_id = int(info["bos_id"])
    use_bos = bool(info["add_bos"]) if add_bos is None else bool(add_bos)
    if use_bos and context is not None and bos_id < 0:
        raise ValueError("add_bos: the model has no BOS token")
    wins, first = _plan(len(tokens), context, stride, chunks, score_from, use_bos)
    chunk = int(getattr(engine, "chunk", 64))
    # Chunked prefill depends on where eval calls cut the sequence: keep the engine's own chunk
    # grid (as one eval call of the window would) and compute the unscored rows' logits too.
    split = prefill == "exact" or engine.policy == "full"
    total = sum(w.length for w in wins)
    bar = _Progress(total, progress, f"perplexity {engine.policy}")
    nlls: List[np.ndarray] = []
    nll_sum, n_scored = 0.0, 0
    t0 = time.perf_counter()
    try:
        for w in wins:
            engine.reset()
            ids = tokens[w.start:w.start + w.length]
            if w.replace_bos:
                ids = [bos_id] + ids[1:]
            last_row = w.length - 2  # the last position predicts nothing inside the window
            for a, b in _pieces(w, chunk, split):
                r0, r1 = max(a, w.first_row), min(b - 1, last_row)
                if r0 > r1:
                    engine.eval(ids[a:b])
                else:
                    logits = engine.eval(ids[a:b], all_logits=True)
                    rows = logits[r0 - a:r1 - a + 1]
                    x = _row_nll(rows, np.asarray(ids[r0 + 1:r1 + 2], dtype=np.int64))
                    nlls.append(x)
                    nll_sum += float(x.sum())
                    n_scored += x.size
                bar.update(b - a, nll_sum, n_scored)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    all_nll = np.concatenate(nlls) if nlls else np.zeros(0)
    ppl, se, mean, nse = nll_stats(all_nll)
    return PerplexityResult(
        ppl=ppl, stderr=se, nll=mean, nll_stderr=nse, n_scored=int(all_nll.size),
        n_tokens=total, n_windows=len(wins), seconds=seconds,
        tokens_per_second=total / seconds if seconds > 0 else float("inf"),
        policy=engine.policy, kv_size=None if engine.policy == "full" else engine.kv_size,
        context=context, stride=stride, score_from=first, prefill=prefill, nlls=all_nll)
