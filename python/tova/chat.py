"""Chat on an :class:`~tova.Engine`: the model's chat template rendered with jinja2 the way Hugging
Face's ``apply_chat_template`` does, and a conversation kept in the engine's one sequence.

Each call renders the whole conversation, then evaluates only the part of the prompt the sequence
does not hold yet (a prefix check on the rendered text), so a multi-turn chat never re-reads its
history. When the rendering does not extend what was fed (an edited history, a changed system
prompt, the engine used for something else meanwhile), the sequence is reset and the prompt read
in full. The fixed-memory KV store evicts as the conversation grows: it never runs out. That
feeding is the core's ``ChatFeed`` (cpp/src/chat_session.h), the same code ``tova chat`` runs:
only the rendering (jinja2 here, built-in renderers there) differs between the two.

Files without a template (the Gemma 3 base GGUF) get a built-in template of their family,
recognized from the vocabulary's special tokens (``<start_of_turn>`` -> Gemma, ``<|im_start|>``
-> ChatML, ``<|eot_id|>`` -> Llama 3).
"""
from __future__ import annotations

import functools
import json
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import (TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple,
                    Union)

from . import _check, _core
from ._template_sandbox import (MAX_LOOP_ITEMS, MAX_RENDERED_CHARS, MAX_TEMPLATE_BYTES, budget,
                                compile_template, jinja2_module)

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine
    from .sampling import SamplingParams

__all__ = ["FALLBACK_TEMPLATES", "render_template", "chat_template_for", "render_prompt"]

Message = Mapping[str, Any]

# Templates of the families tova knows, for files that carry none. They render exactly what the
# C++ renderers (cpp/src/chat.cpp) do; tests/test_chat.py checks that they agree.
FALLBACK_TEMPLATES: Dict[str, str] = {
    # ChatML as SmolLM2 and Qwen write it (without their default system prompts).
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    # Gemma's turns: user / model, no system role (a system message opens the first user turn).
    "gemma": r"""{{ bos_token }}
{%- if messages and messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = '' -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif -%}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}
    {{- message['content'] | trim }}
    {{- '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{ '<start_of_turn>model\n' }}
{%- endif -%}
""",
    # Llama 3: header-wrapped roles, turns closed by <|eot_id|>.
    "llama3": r"""{%- for message in messages -%}
    {%- if loop.first -%}{{ bos_token }}{%- endif -%}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}{%- endif -%}
""",
}


# ---- jinja2, the Hugging Face way (tova/_template_sandbox.py bounds what a template may cost) ----


def render_template(
    template: str,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    **extra: Any,
) -> str:
    """Renders a chat template as ``transformers``' ``apply_chat_template(tokenize=False)``
    does: sandboxed jinja2 with ``trim_blocks`` and ``lstrip_blocks``, ``raise_exception``,
    ``tojson``, ``strftime_now``, and ``messages``, ``add_generation_prompt``, ``bos_token``,
    ``eos_token`` (plus ``extra``) as variables. A template over the limits of
    :mod:`tova._template_sandbox` (its size, its loops' items, the size of what it makes, the
    rendered length: text from a model file is untrusted) raises ``ValueError`` instead of hanging
    or filling memory. A template's ``raise_exception`` or a template
    error becomes a ``ValueError``."""
    _check.text("template", template)
    _check_messages(messages)
    add_generation_prompt = _check.boolean("add_generation_prompt", add_generation_prompt)
    bos_token = _check.text("bos_token", bos_token)
    eos_token = _check.text("eos_token", eos_token)
    jinja2 = jinja2_module()
    if len(template) > MAX_TEMPLATE_BYTES:
        raise ValueError(f"chat template: {len(template)} characters, more than the {MAX_TEMPLATE_BYTES} "
                         "tova renders")
    budget()
    try:
        compiled = compile_template(template)
        pieces, size = [], 0
        for piece in compiled.generate(messages=list(messages), tools=extra.pop("tools", None),
                                       documents=extra.pop("documents", None),
                                       add_generation_prompt=add_generation_prompt,
                                       bos_token=bos_token, eos_token=eos_token, **extra):
            size += len(piece)
            if size > MAX_RENDERED_CHARS:
                raise ValueError(f"chat template: the rendered text exceeds {MAX_RENDERED_CHARS} characters")
            pieces.append(piece)
        return "".join(pieces)
    except jinja2.exceptions.TemplateError as e:
        raise ValueError(f"chat template: {e}") from e
    except RecursionError as e:
        raise ValueError("chat template: recursion too deep") from e
    except ValueError:
        raise
    except (ArithmeticError, AssertionError, AttributeError, IndexError, KeyError, LookupError,
            TypeError) as e:
        # The template's own failure at run time (1/0, a filter given a bad value): text from
        # a model file, so a ValueError naming it, like the template errors above.
        raise ValueError(f"chat template: {type(e).__name__}: {e}") from e
    except MemoryError as e:
        raise ValueError("chat template: rendering ran out of memory") from e


def _check_messages(messages: Sequence[Message]) -> None:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError("messages must be a list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise TypeError(f"messages[{i}] must be a dict with 'role' and 'content', "
                            f"got {type(m).__name__}")
        for key, what in (("role", "'role' string (system, user, assistant)"),
                          ("content", "'content' string")):
            if key not in m:
                raise ValueError(f"messages[{i}] needs a {what}")
            if not isinstance(m[key], str):
                raise TypeError(f"messages[{i}]['{key}'] must be a str, got {type(m[key]).__name__}")
            _check.text(f"messages[{i}]['{key}']", m[key])


# ---- the template of an engine's model ------------------------------------------------------------
def _token_text(engine: "Engine", token_id: int) -> str:
    if token_id < 0:
        return ""
    return engine._e.token_bytes(int(token_id), True).decode("utf-8", errors="replace")


def _check_engine(engine: Any) -> None:
    from .engine import Engine

    if not isinstance(engine, Engine):
        raise TypeError(f"engine must be a tova.Engine, got {type(engine).__name__}")


def chat_template_for(engine: "Engine", chat_template: Optional[str] = None) -> str:
    """The template a chat on ``engine`` uses: ``chat_template`` when given (jinja text, or a
    family name: ``"chatml"``, ``"gemma"``, ``"llama3"``), else the model's own
    ``tokenizer.chat_template``, else the built-in template of the family its special tokens
    show (ChatML with a warning when they show none)."""
    _check_engine(engine)
    if chat_template is not None:
        if not _check.text("chat_template", chat_template):
            raise ValueError("chat_template is empty (give jinja text or a family name)")
        return FALLBACK_TEMPLATES.get(chat_template, chat_template)
    own = engine._info.get("chat_template") or ""
    if own:
        return own
    fmt = _core.chat_format(engine._e)
    if not fmt["recognized"]:
        warnings.warn(f"{engine.path}: no chat template and no known turn tokens; using "
                      f"{fmt['family']} (pass chat_template= to choose)", stacklevel=3)
    return FALLBACK_TEMPLATES[fmt["family"]]


def render_prompt(engine: "Engine", messages: Sequence[Message], *,
                  chat_template: Optional[str] = None, add_generation_prompt: bool = True) -> str:
    """The prompt text of ``messages`` for ``engine``'s model (see :func:`chat_template_for`).

    A chat reads the messages' text as text: a message that spells a control token
    (``"<|im_end|>"``) does not end its turn (:func:`render_marked`). Tokenizing this text with
    ``special=True`` would read such a spelling as the token."""
    _check_engine(engine)
    return _render(engine, chat_template_for(engine, chat_template), messages,
                   add_generation_prompt=add_generation_prompt)


def _render(engine: "Engine", template: str, messages: Sequence[Message], *,
            add_generation_prompt: bool) -> str:
    return render_template(template, messages, add_generation_prompt=add_generation_prompt,
                           bos_token=_token_text(engine, engine._info["bos_id"]),
                           eos_token=_token_text(engine, engine._info["eos_id"]))


def _marked(engine: "Engine", messages: Sequence[Message]) -> List[Dict[str, Any]]:
    """The messages with the text of each marked (the core's ``Tokenizer::mark_literal``): what
    it spells of control tokens is read as text by ``tokenize_within(..., chat=True)``."""
    _check_messages(messages)
    return [dict(m, content=engine._e.mark_literal(m["content"])) for m in messages]


def _render_marked(engine: "Engine", messages: Sequence[Message], *,
                  chat_template: Optional[str] = None) -> str:
    """The prompt of ``messages`` (with the generation prompt) rendered from marked text, for
    ``engine._e.tokenize_within(prompt, False, True, limit, chat=True)``: the template's own
    control tokens are tokens, what the messages spell is text (as OpenAI reads a conversation;
    llama.cpp's server and llama-cpp-python would read ``"<|im_end|>"`` in a message as the
    token that ends a turn). The marks are Unicode noncharacters a message cannot carry (they
    become U+FFFD)."""
    _check_engine(engine)
    return _render(engine, chat_template_for(engine, chat_template), _marked(engine, messages),
                   add_generation_prompt=True)


# ---- the conversation held in the engine's sequence ---------------------------------------------
# The feeding itself (which tokens to evaluate, noticing another use of the sequence, pinning the
# system prompt, recording what the sequence holds after a reply) is the core's ChatFeed
# (cpp/src/chat_session.h), the same code `tova chat` runs; here the prompt is rendered.
@dataclass
class ChatCounters:
    turns: int = 0
    fed_tokens: int = 0
    full_refeeds: int = 0
    last_fed_tokens: int = 0


class _TurnLock:
    """One chat turn at a time per engine: the conversation lives in one sequence, so turns from
    different threads take turns (each gets the reply to its own messages). A thread that starts
    a turn while its own previous one is unfinished (an abandoned stream) takes over: the core
    treats that reply as abandoned."""

    def __init__(self) -> None:
        # Re-entrant: a dropped turn's __del__ (garbage collection) may call leave() from inside
        # enter() or leave() on the same thread.
        self._free = threading.Condition(threading.RLock())
        self._owner: Optional[int] = None
        self._turn: Optional[object] = None

    def enter(self, turn: object) -> None:
        me = threading.get_ident()
        with self._free:
            while self._turn is not None and self._owner != me:
                self._free.wait()
            self._owner, self._turn = me, turn

    def leave(self, turn: object) -> None:
        with self._free:
            if self._turn is turn:
                self._owner = self._turn = None
                self._free.notify()


def _turn_lock(engine: "Engine") -> _TurnLock:
    return engine.__dict__.setdefault("_chat_turn_lock", _TurnLock())


def _feed(engine: "Engine") -> "_core.ChatFeed":
    feed = engine.__dict__.get("_chat_feed")
    if feed is None:
        feed = _core.ChatFeed(engine._e)
        engine.__dict__["_chat_feed"] = feed
    return feed


def reset(engine: "Engine") -> None:
    """Forgets the conversation and empties the sequence (after a turn in progress in another
    thread)."""
    lock = _turn_lock(engine)
    token = object()
    lock.enter(token)
    try:
        _feed(engine).reset()
    finally:
        lock.leave(token)


def _pin_probes(engine: "Engine", template: str, messages: Sequence[Message]) -> Tuple[str, str]:
    """Two renderings of the system prompt and a first user message that differ only in the
    user's text: the core pins the tokens of their common start (the system prompt and what the
    template wraps around it)."""
    system = messages[0]["content"]
    def render(user: str) -> str:
        return _render(engine, template, _marked(engine, [{"role": "system", "content": system},
                                                          {"role": "user", "content": user}]),
                       add_generation_prompt=False)
    return render("a"), render("b")


class ChatTurn:
    """One reply in progress: the prompt is evaluated; iterate for the text pieces."""

    def __init__(self, engine: "Engine", messages: Sequence[Message], *,
                 chat_template: Optional[str], keep_system: bool, max_tokens: int,
                 stop: Union[None, str, Sequence[str]], ignore_eos: bool,
                 sampling: "Optional[SamplingParams]", fields: Mapping[str, Any], method: str = "chat") -> None:
        _check_messages(messages)
        if not messages:
            raise ValueError("messages is empty: a chat needs at least one message")
        _check.integer("max_tokens", max_tokens, minimum=0)
        keep_system = _check.boolean("keep_system", keep_system)
        ignore_eos = _check.boolean("ignore_eos", ignore_eos)
        stops = _check.stop_strings(stop)
        template = chat_template_for(engine, chat_template)
        # (marked: what the messages spell is text; the core's ChatFeed reads it so)
        self.prompt = _render(engine, template, _marked(engine, messages), add_generation_prompt=True)
        pin = None
        if keep_system and messages[0]["role"] == "system":
            pin = _pin_probes(engine, template, messages)
        params = engine._params(sampling, fields, method)
        self._engine = engine
        self._recorded = True  # nothing to record until the reply starts
        self._lock = _turn_lock(engine)
        self._lock.enter(self)
        try:
            self._feed = _feed(engine)
            self.gen = self._feed.start_reply(self.prompt, pin, int(max_tokens), stops,
                                              ignore_eos, params.to_core())
            self.fed_tokens = int(self._feed.counters["last_fed_tokens"])
        except BaseException:
            self._lock.leave(self)
            raise
        self._recorded = False

    def pieces(self) -> Iterator[str]:
        gen = self.gen
        try:
            while not gen.finished:
                piece = gen.next()
                if piece:
                    yield piece
        finally:
            if not gen.finished:
                gen.cancel()
            try:
                self._record()
            except SystemExit:  # the interpreter is exiting (the core starts no call): nothing
                pass            # to record for, and a stream's end then makes no traceback

    def _record(self) -> None:
        """Tells the core what the sequence now holds, and keeps the statistics of the reply
        for :attr:`Engine.last_stats`."""
        if self._recorded:
            return
        self._recorded = True
        try:
            self._feed.finish_reply(self.gen)
            self._engine._local.last = self.gen.stats
        finally:
            self._lock.leave(self)

    def __del__(self) -> None:
        # A stream dropped before it was iterated never runs pieces()' cleanup. Garbage
        # collection may run anywhere (even inside a policy callback of a running step), so only
        # cancel and let the next turn go: it treats this reply as abandoned.
        if not getattr(self, "_recorded", True):
            self._recorded = True
            try:
                self.gen.cancel()
            finally:
                self._lock.leave(self)

    @property
    def completion_tokens(self) -> int:
        """Generated tokens, not counting a final end-of-generation token (as llama-cpp-python)."""
        return int(self.gen.stats["answer_tokens"])


def completion_dict(engine: "Engine", turn: ChatTurn, content: str) -> Dict[str, Any]:
    """The OpenAI / llama-cpp-python ``chat.completion`` object of a finished turn."""
    prompt_tokens = int(engine._e.tokenize_within(turn.prompt, False, True, -1, chat=True)[0])
    completion_tokens = turn.completion_tokens
    finish = turn.gen.finish_reason
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": engine._info.get("name") or engine.path,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "length" if finish == "length" else "stop",
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def counters(engine: "Engine") -> ChatCounters:
    """Turns, prompt tokens fed and full re-reads of the chats on ``engine`` so far."""
    return ChatCounters(**_feed(engine).counters)
