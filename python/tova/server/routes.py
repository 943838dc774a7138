"""The endpoints: /v1/models, /v1/completions, /v1/chat/completions, /health, /metrics.

Each request is stateless (a chat sends its whole conversation every time): its prompt is
rendered with the model's chat template (:mod:`tova.chat`), the template's control tokens read
as tokens and the messages as text (as OpenAI reads them: a message spelling ``<|im_end|>``
does not end its turn), a completion's text prompt with special tokens parsed (as llama.cpp's
server reads it: ``<|im_start|>`` is that token), and every choice runs in its own engine
sequence. ``usage.prompt_tokens`` is the tokens
read, ``usage.completion_tokens`` the tokens generated (a stop string's too; not the end-of-turn
token); the fixed-memory KV store evicts, so a conversation longer than ``kv_size`` still gets
answers (policy ``full`` does not: a prompt longer than its ``n_ctx`` is a 400).
"""
from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from typing import Any, AsyncIterator, Dict, List, Optional, Tuple

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect

from .. import _check
from .. import chat as _chat
from .errors import APIError, error_body
from .schemas import Sampling, parse_chat, parse_completion
from .service import Batch, Service

__all__ = ["router"]

router = APIRouter()


def _service(request: Request) -> Service:
    return request.app.state.service  # type: ignore[no-any-return]


async def _json_body(request: Request) -> Any:
    """The request's JSON, read up to ``max_body_bytes`` (413 beyond: a huge body is refused
    before it is held, parsed or tokenized)."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise APIError(415, f"the request body is encoded '{encoding}'; this server reads only "
                       "uncompressed JSON (send it without Content-Encoding)",
                       code="unsupported_content_encoding")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in ("text/plain", "multipart/form-data"):
        # (what a web page may send anywhere without asking: a form or a no-cors fetch, which
        # could make this server work for a page on another site)
        raise APIError(415, f"the request body is sent as '{kind}'; send JSON "
                       "(Content-Type: application/json)", code="unsupported_media_type")
    limit = _service(request).config.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit, exact=True)
    chunks: List[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit, exact=False)  # (the rest is not read)
            chunks.append(chunk)
    except ClientDisconnect as e:  # (no one reads the answer; not the server's error)
        raise APIError(400, "the client went away before its request was whole",
                       code="client_disconnected") from e
    raw = b"".join(chunks)
    if len(raw) > _PARSE_ON_LOOP_BYTES:  # (parsing megabytes would stall every other client)
        return await asyncio.get_running_loop().run_in_executor(None, _parse_json, raw)
    return _parse_json(raw)


_PARSE_ON_LOOP_BYTES = 64 << 10


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from e
    except RecursionError as e:
        raise APIError(400, "the request body is not valid JSON: nested too deeply",
                       code="invalid_json") from e


def _too_large(size: int, limit: int, *, exact: bool) -> APIError:
    """``size``: the declared length (exact), or what was read when the limit was passed."""
    has = f"{size} bytes" if exact else f"more than {limit} bytes"
    return APIError(413, f"the request body has {has}; "
                    f"this server accepts at most {limit} (--max-body-bytes)",
                    code="request_too_large")


_STOPPING = "the server is shutting down; the generation was stopped"


def _stopping() -> APIError:
    return APIError(503, _STOPPING, type="server_error", code="server_shutting_down")


def _until_stopped(handler: Any) -> Any:
    """An endpoint whose work before its answer (reading the body, tokenizing, waiting) the
    server's shutdown may cut: a 503 the client can read, not a bare 500."""
    @functools.wraps(handler)
    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except asyncio.CancelledError:
            raise _stopping() from None
    return run


def _check_model(service: Service, s: Sampling) -> str:
    model_id = service.config.model_id
    if s.model is not None and s.model != model_id:
        raise APIError(404, f"The model '{s.model}' does not exist; this server serves '{model_id}'",
                       param="model", code="model_not_found")
    return model_id


def _check_prompt(service: Service, ids: List[int], param: str, n: Optional[int] = None) -> None:
    """An empty prompt, or one longer than the server takes (``max_prompt_tokens``, or the
    full cache's ``n_ctx``; ``n`` tokens where the ids were not kept), is a 400 naming
    ``param``."""
    n = len(ids) if n is None else n
    if not n:
        bos = "" if service.engine.model_info["add_bos"] else \
            " (and this model adds no beginning-of-sequence token to start from)"
        raise APIError(400, f"the prompt is empty: it tokenizes to no tokens{bos}", param=param)
    limit, option = service.prompt_limit()
    if limit and n > limit:
        # (OpenAI's words, which clients such as litellm recognize, then tova's reason)
        why = ("this server's limit per request, --max-prompt-tokens"
               if option == "--max-prompt-tokens" else
               "the KV cache of a sequence: policy 'full' never evicts; raise --n-ctx or use an "
               "evicting policy")
        raise APIError(400, f"This model's maximum context length is {limit} tokens ({why}). "
                       f"However, your {param} resulted in {n} tokens.", param=param,
                       code="context_length_exceeded")


async def _tokenize(service: Service, text: str, *, add_bos: bool, param: str,
                    chat: bool = False) -> List[int]:
    """``text``'s token ids, control-token text (``<|im_start|>``) read as those tokens (for a
    ``chat`` prompt, rendered from marked messages: only the template's own), with
    the model's BOS first if ``add_bos`` (not for a rendered chat: it carries its own), off the
    event loop; a 400 naming ``param`` for text that is not valid Unicode or is longer than the
    server takes (then never held as a Python list)."""
    engine = service.engine
    try:
        _check.text(param, text)
    except ValueError as e:
        raise APIError(400, str(e), param=param, code="invalid_value") from e
    limit = service.prompt_limit()[0] or -1
    n, ids = await asyncio.get_running_loop().run_in_executor(
        None, lambda: engine._e.tokenize_within(text, add_bos, True, limit, chat=chat))
    _check_prompt(service, ids or [], param, n)
    return list(ids)


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _logprobs_content(svc: Any, entries: List[Any]) -> Dict[str, Any]:
    """OpenAI's chat ``logprobs`` object for ``(token, logprob, top)`` entries."""
    engine = svc.engine

    def item(token: int, lp: float) -> Dict[str, Any]:
        b = engine._e.token_bytes(int(token), True)
        return {"token": b.decode("utf-8", errors="replace"), "logprob": lp, "bytes": list(b)}

    return {"content": [dict(item(t, lp), top_logprobs=[item(a, b) for a, b in top])
                        for t, lp, top in entries], "refusal": None}


class _Offsets:
    """A choice's text as it grows, and where its bytes fall in characters (the legacy
    ``text_offset``), counted once: the bytes asked for only move forward."""

    def __init__(self) -> None:
        self.raw = bytearray()
        self._byte = self._char = 0  # a character boundary counted so far

    def add(self, text: str) -> int:
        """Appends ``text``; returns the text's length in bytes."""
        self.raw += text.encode("utf-8")
        return len(self.raw)

    def chars_before(self, at: int) -> int:
        n = self._char + len(bytes(self.raw[self._byte:at]).decode("utf-8", errors="ignore"))
        if at >= len(self.raw) or self.raw[at] & 0xC0 != 0x80:  # a boundary: count from here
            self._byte, self._char = at, n
        return n


def _completion_logprobs(svc: Any, entries: List[Any], offsets: _Offsets, start: int) -> Dict[str, Any]:
    """The completions endpoint's legacy ``logprobs`` object for the ``(token, logprob, top)``
    entries of a choice's tokens, the first beginning at byte ``start`` of its text: tokens,
    their log-probabilities, the likeliest alternatives as ``{token: logprob}``, and where each
    begins in the text (characters)."""
    engine = svc.engine

    def name(token: int) -> str:
        return engine._e.token_bytes(int(token), True).decode("utf-8", errors="replace")

    out: Dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for token, lp, top in entries:
        out["tokens"].append(name(token))
        out["token_logprobs"].append(lp)
        out["top_logprobs"].append({name(a): b for a, b in top})
        out["text_offset"].append(offsets.chars_before(start))
        start += len(engine._e.token_bytes(int(token), False))
    return out


def _in_content(svc: Any, entries: List[Any], start: int, end: int) -> Tuple[List[Any], int]:
    """The leading ``entries`` whose token begins before byte ``end`` of the content, the first
    beginning at byte ``start``, and where the next one begins. A token partly inside the
    content stays; those of a stop string (cut from the content) and the end-of-turn token (no
    text) are left out, as the content has no text of theirs."""
    kept: List[Any] = []
    for entry in entries:
        if start >= end:
            break
        kept.append(entry)
        start += len(svc.engine._e.token_bytes(int(entry[0]), False))  # (the text the content has)
    return kept, start


def _usage(batch: Batch, n: int) -> Dict[str, Any]:
    # A request with n choices a prompt reads it n times; OpenAI counts it once. Cached: prompt
    # tokens a sequence already held from the conversation's previous request (not read again).
    # Choices k*n .. k*n+n-1 read prompt k (completions with several prompts): each counted once.
    groups: Dict[int, List[Any]] = {}
    for c in batch.choices:
        groups.setdefault(c.index // n, []).append(c)
    p = sum(max(c.prompt_tokens for c in g) for g in groups.values())
    cached = sum(max(c.cached_tokens for c in g) for g in groups.values())
    done = sum(c.completion_tokens for c in batch.choices)
    return {"prompt_tokens": p, "completion_tokens": done, "total_tokens": p + done,
            "prompt_tokens_details": {"cached_tokens": cached}}


async def _collect(request: Request, batch: Batch) -> List[str]:
    """Waits for every choice's whole text; cancels them if the client goes away (then a 499,
    nginx's "client closed request", that no one reads but /metrics counts)."""
    texts = [""] * len(batch.choices)
    gone = False

    async def gather() -> None:
        async for index, piece in batch.events():
            if piece:
                texts[index] += piece

    task = asyncio.ensure_future(gather())
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            if not task.done() and await request.is_disconnected():
                gone = True
                batch.cancel()
        task.result()  # a failed choice raises here
        if gone:
            raise APIError(499, "the client closed the connection; the generation was cancelled",
                           code="client_closed_request")
        return texts
    finally:  # (the server stopping cancels this: the endpoint answers 503, _until_stopped)
        if not task.done():
            task.cancel()
        batch.cancel()  # no-op for finished choices


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _stream(batch: Batch, chunk: Any, s: Sampling, usage_chunk: Any,
                  n: int) -> AsyncIterator[str]:
    """Server-sent events of a batch: ``chunk(index, piece, finish)`` for every piece and end,
    then the usage chunk (``stream_options.include_usage``; ``n`` choices a prompt), then
    ``[DONE]``. Cancels the
    choices when the client goes away (the generator is closed or cancelled)."""
    try:
        try:
            async for index, piece in batch.events():
                if piece is None:
                    yield _sse(chunk(index, None, _finish(batch.choices[index].finish_reason)))
                elif piece:
                    yield _sse(chunk(index, piece, None))
        except Exception as e:  # noqa: BLE001 - the stream has begun: report in-band
            yield _sse(error_body(f"generation failed: {e}", "server_error"))
            yield "data: [DONE]\n\n"
            return
        except asyncio.CancelledError:  # the server stops: say so before the stream ends
            yield _sse(error_body(_STOPPING, "server_error", None, "server_shutting_down"))
            yield "data: [DONE]\n\n"
            return
        if s.include_usage:
            yield _sse(usage_chunk(_usage(batch, n)))
        yield "data: [DONE]\n\n"
    finally:
        batch.cancel()


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# ---- endpoints -------------------------------------------------------------------------------------
@router.api_route("/health", methods=["GET", "HEAD"])
async def health(request: Request) -> Dict[str, Any]:
    svc = _service(request)
    active, waiting = svc.occupancy()
    return {"status": "ok", "model": svc.config.model_id, "active_sequences": active,
            "queued": waiting, "n_seq": svc.engine.n_seq}


@router.api_route("/metrics", methods=["GET", "HEAD"])
async def metrics(request: Request) -> Response:
    svc = _service(request)
    return PlainTextResponse(svc.metrics.render(svc.gauges),
                             media_type="text/plain; version=0.0.4; charset=utf-8")


def _model_card(svc: Service) -> Dict[str, Any]:
    return {"id": svc.config.model_id, "object": "model", "created": int(svc.metrics.started),
            "owned_by": "tova"}


@router.api_route("/v1/models", methods=["GET", "HEAD"])
async def list_models(request: Request) -> Dict[str, Any]:
    return {"object": "list", "data": [_model_card(_service(request))]}


@router.api_route("/v1/models/{model_id:path}", methods=["GET", "HEAD"])
async def get_model(model_id: str, request: Request) -> Dict[str, Any]:
    svc = _service(request)
    if model_id != svc.config.model_id:
        raise APIError(404, f"The model '{model_id}' does not exist", param="model",
                       code="model_not_found")
    return _model_card(svc)


@router.post("/v1/chat/completions")
@_until_stopped
async def chat_completions(request: Request) -> Response:
    svc = _service(request)
    cfg = svc.config
    body = await _json_body(request)

    def prepare() -> Tuple[Any, str, str]:
        req = parse_chat(body, default_max_tokens=cfg.default_max_tokens,
                         max_tokens_cap=cfg.max_tokens_cap)
        model = _check_model(svc, req.sampling)
        try:
            prompt = _chat._render_marked(svc.engine, req.messages)  # (messages are text)
        except (ValueError, TypeError) as e:
            raise APIError(400, str(e), param="messages") from e
        return req, model, prompt

    # Off the event loop: a conversation of many messages takes a while to check and render,
    # and other clients' streams must not wait for it.
    req, model, prompt = await asyncio.get_running_loop().run_in_executor(None, prepare)
    s = req.sampling
    n = s.n
    svc.check_fits(n, "n")
    ids = await _tokenize(svc, prompt, add_bos=False, param="messages", chat=True)
    batch = svc.start([ids] * n, s.fields)
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    if s.stream:
        started = set()
        # Per choice: logprobs sent, the byte where the next one's token begins, content bytes
        # sent. A token's entry goes with the chunk that completes the text it begins.
        sent = [0] * len(batch.choices)
        begins = [0] * len(batch.choices)
        content = [0] * len(batch.choices)

        def chunk_logprobs(index: int, piece: Optional[str]) -> Optional[Dict[str, Any]]:
            if s.logprobs is None:
                return None
            content[index] += len(piece.encode("utf-8")) if piece else 0
            new, begins[index] = _in_content(svc, batch.choices[index].handle.logprobs(sent[index]),
                                             begins[index], content[index])
            sent[index] += len(new)
            return _logprobs_content(svc, new)

        def chunk(index: int, piece: Optional[str], finish: Optional[str]) -> Dict[str, Any]:
            delta: Dict[str, Any] = {}
            if index not in started:
                started.add(index)
                delta["role"] = "assistant"
            if piece is not None:
                delta["content"] = piece
            out: Dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": created,
                                   "model": model,
                                   "choices": [{"index": index, "delta": delta,
                                                "logprobs": chunk_logprobs(index, piece),
                                                "finish_reason": finish}]}
            if s.include_usage:
                out["usage"] = None
            return out

        def usage_chunk(usage: Dict[str, int]) -> Dict[str, Any]:
            return {"id": rid, "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": [], "usage": usage}

        return StreamingResponse(_stream(batch, chunk, s, usage_chunk, n),
                                 media_type="text/event-stream", headers=_SSE_HEADERS)

    texts = await _collect(request, batch)

    def logprobs(c: Any) -> Optional[Dict[str, Any]]:
        if s.logprobs is None:
            return None
        size = len(texts[c.index].encode("utf-8"))
        return _logprobs_content(svc, _in_content(svc, c.handle.logprobs(), 0, size)[0])

    return JSONResponse({
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": c.index,
                     "message": {"role": "assistant", "content": texts[c.index], "refusal": None},
                     "logprobs": logprobs(c), "finish_reason": _finish(c.finish_reason)}
                    for c in batch.choices],
        "usage": _usage(batch, n),
    })


@router.post("/v1/completions")
@_until_stopped
async def completions(request: Request) -> Response:
    svc = _service(request)
    cfg = svc.config
    req = parse_completion(await _json_body(request), default_max_tokens=16,
                           max_tokens_cap=cfg.max_tokens_cap)
    s = req.sampling
    model = _check_model(svc, s)
    engine = svc.engine
    n = s.n
    svc.check_fits(len(req.prompts) * n, "n" if len(req.prompts) == 1 else "prompt")
    prompt_ids: List[List[int]] = []
    for p in req.prompts:
        if isinstance(p, str):
            ids = await _tokenize(svc, p, add_bos=bool(engine.model_info["add_bos"]), param="prompt")
        else:
            ids = list(p)
            bad = next((t for t in ids if not 0 <= t < engine.n_vocab), None)
            if bad is not None:
                raise APIError(400, f"token id {bad} is out of range [0, {engine.n_vocab})",
                               param="prompt", code="invalid_value")
            _check_prompt(svc, ids, "prompt")
        prompt_ids.append(ids)
    # Choice k is prompt k // n with seed + k % n (OpenAI orders choices prompt by prompt).
    batch = svc.start([ids for ids in prompt_ids for _ in range(n)],
                      lambda k: s.fields(k % n))
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    # (a token-id prompt with its control tokens' text: echo + completion reads back as the prompt)
    echo = ([p if isinstance(p, str) else engine.detokenize(p, special=True) for p in req.prompts]
            if req.echo else None)

    if s.stream:
        echoed = set()
        # Per choice: the text sent so far, logprobs entries sent, the byte where the next
        # entry's token begins (as the chat stream's).
        so_far = [_Offsets() for _ in batch.choices]
        sent = [0] * len(batch.choices)
        begins = [0] * len(batch.choices)

        def chunk_logprobs(index: int, text: str) -> Optional[Dict[str, Any]]:
            if s.logprobs is None:
                return None
            size = so_far[index].add(text)
            new, end = _in_content(svc, batch.choices[index].handle.logprobs(sent[index]),
                                   begins[index], size)
            sent[index] += len(new)
            out = _completion_logprobs(svc, new, so_far[index], begins[index])
            begins[index] = end
            return out

        def chunk(index: int, piece: Optional[str], finish: Optional[str]) -> Dict[str, Any]:
            text = piece or ""
            if echo is not None and index not in echoed:
                echoed.add(index)
                text = echo[index // n] + text
            out: Dict[str, Any] = {"id": rid, "object": "text_completion", "created": created,
                                   "model": model,
                                   "choices": [{"index": index, "text": text,
                                                "logprobs": chunk_logprobs(index, text),
                                                "finish_reason": finish}]}
            if s.include_usage:
                out["usage"] = None
            return out

        def usage_chunk(usage: Dict[str, int]) -> Dict[str, Any]:
            return {"id": rid, "object": "text_completion", "created": created, "model": model,
                    "choices": [], "usage": usage}

        return StreamingResponse(_stream(batch, chunk, s, usage_chunk, n),
                                 media_type="text/event-stream", headers=_SSE_HEADERS)

    texts = await _collect(request, batch)
    usage = _usage(batch, n)

    def logprobs(c: Any) -> Optional[Dict[str, Any]]:
        if s.logprobs is None:  # (no echo here: refused with logprobs)
            return None
        offsets = _Offsets()
        entries = _in_content(svc, c.handle.logprobs(), 0, offsets.add(texts[c.index]))[0]
        return _completion_logprobs(svc, entries, offsets, 0)

    return JSONResponse({
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": c.index,
                     "text": (echo[c.index // n] if echo else "") + texts[c.index],
                     "logprobs": logprobs(c), "finish_reason": _finish(c.finish_reason)}
                    for c in batch.choices],
        "usage": usage,
    })
