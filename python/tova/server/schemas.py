"""The request bodies of the OpenAI endpoints, checked by hand so that every mistake gets a 400
naming the field (OpenAI's shapes: https://platform.openai.com/docs/api-reference).

Fields tova does not know are ignored, as OpenAI-compatible servers do; so are
llama-cpp-python's own (``grammar``, ``mirostat_mode``, ``typical_p``, ...). OpenAI's fields that
would change the answer and are not implemented are refused (``_unsupported``). Besides OpenAI's
sampling fields, tova's own ``top_k``, ``min_p``, ``repeat_penalty`` and ``ignore_eos`` (generate
all ``max_tokens`` tokens) are accepted. Defaults follow
OpenAI (temperature 1, top_p 1, no top-k / min-p), not tova's CLI defaults.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Union

from .. import _check
from .errors import invalid

__all__ = ["Sampling", "ChatRequest", "CompletionRequest", "ROLES", "parse_chat", "parse_completion"]

Prompt = Union[str, List[int]]

# The message roles OpenAI defines ("developer" is read as "system"; "function" is the legacy
# "tool"); another role is a 400, not text the template renders as it may.
ROLES = ("system", "developer", "user", "assistant", "tool", "function")


@dataclass
class Sampling:
    """What every generation endpoint shares."""
    model: Optional[str]
    max_tokens: int
    stop: List[str]
    n: int
    stream: bool
    include_usage: bool
    seed: Optional[int]
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False
    logprobs: Optional[int] = None  # chat: top_logprobs when "logprobs": true, else None

    def fields(self, index: int) -> Dict[str, Any]:
        """Keywords for :meth:`tova.Engine.submit` of choice ``index`` (seed + index when a seed
        was given, so that the ``n`` choices differ and each is reproducible)."""
        f: Dict[str, Any] = dict(
            max_tokens=self.max_tokens, stop=list(self.stop), temperature=self.temperature,
            top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
            repeat_penalty=self.repeat_penalty, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, ignore_eos=self.ignore_eos,
            reuse_prefix=True)  # a conversation's next request continues its sequence
        if self.seed is not None:  # any int64 (OpenAI's range), folded into the engine's 0..2^63-1
            f["seed"] = (self.seed + index) % 2 ** 63
        if self.logprobs is not None:
            f["logprobs"] = self.logprobs
        return f


@dataclass
class ChatRequest:
    messages: List[Dict[str, str]]
    sampling: Sampling


@dataclass
class CompletionRequest:
    prompts: List[Prompt]
    sampling: Sampling
    echo: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)


# ---- field checks ---------------------------------------------------------------------------------
def _number(body: Mapping[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise invalid(f"'{name}' must be a number, got {_kind(v)}", name, "invalid_type")
    if not math.isfinite(v):
        raise invalid(f"'{name}' must be a finite number, got {v}", name, "invalid_value")
    if not lo <= v <= hi:
        raise invalid(f"'{name}' must be between {lo:g} and {hi:g}, got {v}", name, "invalid_value")
    return float(v)


def _int(body: Mapping[str, Any], name: str, default: Optional[int], lo: Optional[int] = None,
         hi: Optional[int] = None) -> Optional[int]:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise invalid(f"'{name}' must be an integer, got {_kind(v)}", name, "invalid_type")
    if lo is not None and v < lo:
        raise invalid(f"'{name}' must be >= {lo}, got {v}", name, "invalid_value")
    if hi is not None and v > hi:
        raise invalid(f"'{name}' must be <= {hi}, got {v}", name, "invalid_value")
    return v


def _bool(body: Mapping[str, Any], name: str, default: bool) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise invalid(f"'{name}' must be a boolean, got {_kind(v)}", name, "invalid_type")
    return v


def _kind(v: Any) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number",
             list: "an array", dict: "an object", type(None): "null"}
    return names.get(type(v), type(v).__name__)


# Stop strings are checked after every token of every running sequence: a request may not make
# that work unbounded for the others (OpenAI takes 4).
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 1024


def _stop(body: Mapping[str, Any]) -> List[str]:
    v = body.get("stop")
    if v is None:
        return []
    if isinstance(v, str):
        v = [v]
    if not (isinstance(v, list) and all(isinstance(s, str) for s in v)):
        raise invalid("'stop' must be a string or an array of strings", "stop", "invalid_type")
    if len(v) > MAX_STOP_STRINGS:
        raise invalid(f"'stop' has {len(v)} strings; this server takes at most {MAX_STOP_STRINGS}",
                      "stop", "invalid_value")
    for s in v:
        _text("stop", s)
        if len(s) > MAX_STOP_CHARS:
            raise invalid(f"a 'stop' string has {len(s)} characters; this server takes at most "
                          f"{MAX_STOP_CHARS}", "stop", "invalid_value")
    return [s for s in v if s]


def _text(name: str, value: str) -> str:
    """A string UTF-8 can encode (no lone surrogate), else a 400 naming the field."""
    try:
        return _check.text(name, value)
    except ValueError as e:
        raise invalid(str(e), name, "invalid_value") from None


def _logprobs(body: Mapping[str, Any], chat: bool) -> Optional[int]:
    """Chat: ``logprobs: true`` with ``top_logprobs`` 0..20 -> that count. Completions: the
    legacy integer ``logprobs`` 0..5 (OpenAI's range; 0: the sampled tokens' log-probabilities
    alone), for the generated tokens: with ``echo`` OpenAI also scores the prompt's tokens, which
    this server does not, so that pair is refused."""
    logprobs = body.get("logprobs")
    top = body.get("top_logprobs")
    if not chat:
        k = _int(body, "logprobs", None, lo=0, hi=5)
        if k is not None and body.get("echo") is True:
            raise invalid("'logprobs' with 'echo' is not supported by this server (the prompt's "
                          "tokens are not scored); ask without 'echo'", "logprobs",
                          "unsupported_parameter")
        return k
    want = _bool(body, "logprobs", False)
    k = _int(body, "top_logprobs", None, lo=0, hi=20)
    if k is not None and not want:
        raise invalid("'top_logprobs' needs 'logprobs': true", "top_logprobs", "invalid_value")
    return (k or 0) if want else None


def _unsupported(body: Mapping[str, Any], chat: bool) -> None:
    """OpenAI fields that would change the answer and that this server does not implement: a 400
    naming the field, never an answer that silently ignored it. Their "off" values pass."""
    def refuse(name: str, what: str) -> None:
        raise invalid(f"'{name}' is not supported by this server ({what})", name,
                      "unsupported_parameter")

    if body.get("logit_bias") not in (None, {}):
        refuse("logit_bias", "no per-token biases; use stop strings or a lower temperature")
    if not chat:
        if body.get("suffix") not in (None, ""):
            refuse("suffix", "no fill-in-the-middle completion")
        best_of = _int(body, "best_of", None, lo=1)
        if best_of is not None and best_of < (_int(body, "n", 1) or 1):
            raise invalid(f"'best_of' must be >= 'n', got {best_of}", "best_of", "invalid_value")
        if best_of not in (None, 1):
            refuse("best_of", "no server-side choice among several generations; ask for 'n' "
                   "choices and pick one")
        return
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools not in (None, []) and choice != "none":
        refuse("tools", "no function calling; send tool_choice 'none' to have the tools ignored")
    if choice not in (None, "none", "auto") and not tools:
        refuse("tool_choice", "no function calling")
    if body.get("functions") not in (None, []) and body.get("function_call") not in ("none",):
        refuse("functions", "no function calling")
    modalities = body.get("modalities")
    if modalities not in (None, ["text"]) or body.get("audio") is not None:
        refuse("modalities" if body.get("audio") is None else "audio", "text output only")
    if body.get("web_search_options") is not None:
        refuse("web_search_options", "no web search")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") in (None, "text")):
        refuse("response_format", "no constrained output: only {'type': 'text'}")


def _sampling(body: Mapping[str, Any], default_max_tokens: int, max_tokens_cap: int,
              chat: bool = False) -> Sampling:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise invalid(f"'model' must be a string, got {_kind(model)}", "model", "invalid_type")
    _unsupported(body, chat)
    name = "max_completion_tokens"
    max_tokens = _int(body, name, None, lo=0)
    if max_tokens is None:
        name = "max_tokens"
        max_tokens = _int(body, name, None, lo=0)
    if max_tokens is None:
        max_tokens = default_max_tokens
    if max_tokens > max_tokens_cap:
        raise invalid(f"'{name}' is {max_tokens}; this server allows at most {max_tokens_cap}",
                      name, "invalid_value")
    stream = _bool(body, "stream", False)
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise invalid("'stream_options' must be an object", "stream_options", "invalid_type")
    if opts is not None and not stream:  # (as OpenAI answers)
        raise invalid("'stream_options' is allowed only with 'stream': true", "stream_options",
                      "invalid_value")
    include_usage = _bool(opts or {}, "include_usage", False)
    logprobs = _logprobs(body, chat)
    # -1 asks for a random seed (llama.cpp's convention), as no seed does; choice i of n draws
    # with seed + i (modulo 2^63, so every int64 OpenAI allows is a seed).
    seed = _int(body, "seed", None, lo=-2 ** 63, hi=2 ** 63 - 1)
    if seed == -1:
        seed = None
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    return Sampling(
        model=model, max_tokens=max_tokens, stop=_stop(body),
        n=_int(body, "n", 1, lo=1, hi=128) or 1,
        stream=stream, include_usage=include_usage,
        seed=seed,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=top_p if top_p > 0 else 1e-6,  # 0 would mean "nothing": keep the top token
        top_k=_int(body, "top_k", 0, lo=0, hi=2 ** 31 - 1) or 0,
        min_p=_number(body, "min_p", 0.0, 0.0, 1.0),
        repeat_penalty=_number(body, "repeat_penalty", 1.0, 1e-6, 100.0),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        ignore_eos=_bool(body, "ignore_eos", False),
        logprobs=logprobs,
    )


def _content(m: Mapping[str, Any], i: int) -> str:
    c = m.get("content")
    if c is None:
        if m.get("role") != "assistant":  # (an assistant's may be null, as OpenAI allows)
            raise invalid(f"messages[{i}].content is required for role '{m.get('role')}'",
                          f"messages[{i}].content", "missing_required_parameter")
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # content parts: only text (and an assistant's refusal) can be read
        out = []
        for part in c:
            key = "refusal" if isinstance(part, dict) and part.get("type") == "refusal" else "text"
            if (not isinstance(part, dict) or part.get("type") not in ("text", "refusal")
                    or not isinstance(part.get(key), str)):
                raise invalid(f"messages[{i}].content: only text parts are supported",
                              f"messages[{i}].content", "unsupported_content")
            out.append(part[key])
        return "".join(out)
    raise invalid(f"messages[{i}].content must be a string or an array of text parts, got {_kind(c)}",
                  f"messages[{i}].content", "invalid_type")


# ---- the two bodies ----------------------------------------------------------------------------------
def parse_chat(body: Any, *, default_max_tokens: int, max_tokens_cap: int) -> ChatRequest:
    """A /v1/chat/completions body, checked; raises :class:`APIError` (400) naming the field."""
    if not isinstance(body, dict):
        raise invalid(f"the request body must be a JSON object, got {_kind(body)}")
    messages = body.get("messages")
    if messages is None:
        raise invalid("'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise invalid(f"'messages' must be an array, got {_kind(messages)}", "messages", "invalid_type")
    if not messages:
        raise invalid("'messages' must contain at least one message", "messages", "invalid_value")
    checked: List[Dict[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise invalid(f"messages[{i}] must be an object, got {_kind(m)}", f"messages[{i}]",
                          "invalid_type")
        role = m.get("role")
        if not isinstance(role, str) or not role:
            raise invalid(f"messages[{i}].role must be a non-empty string", f"messages[{i}].role",
                          "invalid_type")
        if role not in ROLES:
            raise invalid(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}",
                          f"messages[{i}].role", "invalid_value")
        for calls in ("tool_calls", "function_call"):  # (history the template would drop)
            if m.get(calls) not in (None, []):
                raise invalid(f"messages[{i}].{calls}: function calling is not supported by this "
                              "server", f"messages[{i}].{calls}", "unsupported_parameter")
        checked.append({"role": "system" if role == "developer" else role, "content": _content(m, i)})
    return ChatRequest(checked, _sampling(body, default_max_tokens, max_tokens_cap, chat=True))


def parse_completion(body: Any, *, default_max_tokens: int, max_tokens_cap: int) -> CompletionRequest:
    """A /v1/completions body, checked. ``prompt``: a string, an array of strings (one set of
    ``n`` choices each), an array of token ids, or an array of such arrays."""
    if not isinstance(body, dict):
        raise invalid(f"the request body must be a JSON object, got {_kind(body)}")
    p = body.get("prompt")
    if p is None:
        raise invalid("'prompt' is required", "prompt", "missing_required_parameter")
    prompts: List[Prompt]
    if isinstance(p, str):
        prompts = [p]
    elif isinstance(p, list) and p and all(isinstance(x, int) and not isinstance(x, bool) for x in p):
        prompts = [list(p)]
    elif isinstance(p, list) and p and all(isinstance(x, str) for x in p):
        prompts = list(p)
    elif (isinstance(p, list) and p and all(isinstance(x, list) and x and all(
            isinstance(t, int) and not isinstance(t, bool) for t in x) for x in p)):
        prompts = [list(x) for x in p]
    else:
        raise invalid("'prompt' must be a string, an array of strings, or an array of token ids",
                      "prompt", "invalid_type")
    return CompletionRequest(prompts, _sampling(body, default_max_tokens, max_tokens_cap),
                             echo=_bool(body, "echo", False))
