"""``tova serve``: an OpenAI-compatible HTTP server over one model (FastAPI + uvicorn)."""
from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
import threading
from typing import Any, List, Optional, Sequence

__all__ = ["main", "build_parser"]


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0 to 65535)")
    return port


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tova serve",
        description="Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, "
                    "/v1/completions, /v1/models, /health, /metrics). Every request runs in its own "
                    "engine sequence; the KV cache of each stays in fixed memory.")
    p.add_argument("-m", "--model", required=True, help="GGUF path or registry name")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8080, help="port (default 8080; 0: any free port)")
    seqs = p.add_mutually_exclusive_group()
    seqs.add_argument("--n-seq", type=int, default=None,
                      help="sequences decoded together (default 8)")
    seqs.add_argument("--kv-budget", default=None,
                      help="bytes for all KV stores ('256MiB'): as many sequences as fit")
    p.add_argument("--kv-size", type=int, default=None,
                   help="tokens kept per layer and sequence by an evicting policy (default 512, "
                        "or the model's context when shorter)")
    p.add_argument("-c", "--n-ctx", "--ctx-size", dest="n_ctx", type=int, default=None,
                   help="with --policy full: the tokens each sequence's cache holds, the longest "
                        "prompt plus answer (default 2048; llama-server's --ctx-size)")
    p.add_argument("--policy", default="tova", help="tova (default), tova_ema, h2o, sink, window, full")
    p.add_argument("-t", "--threads", type=int, default=None, help="compute threads (default: all cores)")
    p.add_argument("--kv-type", default=None, help="KV element type: f16 (default), q8_0, q5_1, q4_1, ... or K/V "
                   "(q8_0/q4_1; values may also be q3_0)")
    p.add_argument("--kv-lo-type", default=None,
                   help="a lower-precision tier for the tokens beyond --kv-hi-size (q4_0, or K/V: q4_0/q3_0): more "
                        "tokens in the same bytes")
    p.add_argument("--kv-hi-size", type=int, default=None,
                   help="tokens kept in --kv-type with --kv-lo-type (default: a quarter of --kv-size)")
    p.add_argument("--device", default=None, help="cpu (default) or cuda (a build with the CUDA backend)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests that may wait for a sequence; more are answered 429 (default 64)")
    p.add_argument("--max-prompt-tokens", type=int, default=None,
                   help="longest prompt accepted per request, 0 = no limit (default 32768, or "
                        "--n-ctx with --policy full if less)")
    p.add_argument("--max-body-bytes", type=int, default=8 << 20,
                   help="largest request body accepted; larger ones are answered 413 (default 8 MiB)")
    p.add_argument("--max-connections", type=int, default=1024,
                   help="requests handled at once (a stream until it ends); more are answered 503 "
                        "(default 1024); open connections, idle keep-alive ones included, are held "
                        "to twice that, at least 64 more")
    p.add_argument("--cors-origins", default="",
                   help="comma-separated web origins allowed to call the API from a browser "
                        "('*': any; default: none)")
    p.add_argument("--max-tokens", type=int, default=1024,
                   help="max_tokens of a chat request that sets none (default 1024)")
    p.add_argument("--api-key", default=os.environ.get("TOVA_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $TOVA_API_KEY)")
    p.add_argument("--model-id", default=None,
                   help="the name clients send as 'model' (default: the -m argument's name)")
    p.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    return p


# Seconds a stopping server gives the requests still running (SIGTERM, Ctrl-C); one before the
# end, the generations still running are ended, so that their answers (a 503, a stream's error
# event and [DONE]) complete and uvicorn has no request left to cut off.
_GRACE_S = 5


def _server_class(uvicorn: Any) -> Any:
    """uvicorn.Server, ending the service's generations shortly before the graceful shutdown's
    time is up (uvicorn imported by the caller: the server extra is optional)."""

    class Server(uvicorn.Server):  # type: ignore[misc, name-defined]
        def __init__(self, config: Any, service: Any) -> None:
            super().__init__(config)
            self._service = service
            self._timer: Optional[threading.Timer] = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            if self._timer is None:
                self._timer = threading.Timer(_GRACE_S - 1.0, self._service.stop_generations)
                self._timer.daemon = True
                self._timer.start()

    return Server


def _is_loopback(host: str) -> bool:
    """True for an address only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name: whatever it resolves to, not known to be private
        return False


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: any free one), as uvicorn binds its own."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _model_id(model: str) -> str:
    base = os.path.basename(model)
    return base[:-5] if base.endswith(".gguf") else base


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        import uvicorn

        from .app import create_app
    except ImportError as e:
        print(f"tova serve needs the server extra: pip install 'tova[server]' ({e})", file=sys.stderr)
        return 1
    from ..engine import Engine
    from .._core import GGUFError
    from .service import ServeConfig, cache_tokens, default_max_prompt_tokens

    n_seq = args.n_seq if args.n_seq is not None or args.kv_budget is not None else 8
    for name in ("n_seq", "kv_size", "n_ctx", "threads", "max_queue", "max_prompt_tokens", "max_tokens",
                 "max_body_bytes", "max_connections"):
        v = getattr(args, name)
        if v is not None and v < (0 if name in ("max_queue", "max_prompt_tokens") else 1):
            print(f"tova serve: --{name.replace('_', '-')} must be positive", file=sys.stderr)
            return 2
    if args.api_key is not None and not args.api_key.strip():  # (an unset secret, say: not "no key")
        print("tova serve: --api-key (or $TOVA_API_KEY) is empty: give a key, or leave it unset to "
              "serve without one", file=sys.stderr)
        return 2
    # The address first: a port in use or a host that does not resolve is told before the model
    # loads (seconds), as a line of ours, exit status 1.
    try:
        sock = _listen(args.host, args.port)
    except OSError as e:
        print(f"tova serve: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 1
    try:
        engine = Engine(args.model, n_seq=n_seq, kv_budget=args.kv_budget, kv_size=args.kv_size,
                        n_ctx=args.n_ctx, policy=args.policy, n_threads=args.threads, device=args.device,
                        kv_type=args.kv_type, kv_lo_type=args.kv_lo_type,
                        kv_hi_size=args.kv_hi_size)
    except (FileNotFoundError, GGUFError) as e:  # the model file: a runtime error, as tova run says
        sock.close()
        print(f"tova serve: {e}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, RuntimeError, OSError) as e:  # the settings
        sock.close()
        print(f"tova serve: {e}", file=sys.stderr)
        return 2
    cache, size = cache_tokens(engine)
    if cache == "n_ctx" and args.kv_size is not None:
        print("tova serve: --kv-size is not used by --policy full (its cache holds --n-ctx tokens)",
              file=sys.stderr)
    if cache != "n_ctx" and args.n_ctx is not None:  # (llama-server's -c: here the fixed cache is --kv-size)
        print(f"tova serve: --n-ctx is not used by --policy {engine.policy} (its cache keeps "
              f"--kv-size {engine.kv_size} tokens and evicts; --n-ctx sizes --policy full's)",
              file=sys.stderr)
    max_prompt = (default_max_prompt_tokens(engine) if args.max_prompt_tokens is None
                  else args.max_prompt_tokens)
    loopback = _is_loopback(args.host)
    if not loopback and args.api_key is None:
        print(f"tova serve: listening on {args.host} without --api-key: anyone who can reach this "
              "address can use the API", file=sys.stderr)
    config = ServeConfig(model_id=args.model_id or _model_id(args.model), max_queue=args.max_queue,
                         max_prompt_tokens=max_prompt, api_key=args.api_key,
                         allowed_hosts=("localhost", "127.0.0.1", "::1") if loopback else (),
                         default_max_tokens=args.max_tokens, max_body_bytes=args.max_body_bytes,
                         max_requests=args.max_connections,
                         cors_origins=tuple(o.strip() for o in args.cors_origins.split(",") if o.strip()))
    app = create_app(engine, config)
    # The app bounds the requests handled at once (an OpenAI-shaped 503); uvicorn's own bound, on
    # connections and requests together (a plain-text 503; idle keep-alive connections and the
    # new one counted), is a backstop at twice that, at least 64 more.
    config_uv = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                               timeout_graceful_shutdown=_GRACE_S,
                               limit_concurrency=max(2 * args.max_connections, args.max_connections + 64) + 1)
    server = _server_class(uvicorn)(config_uv, app.state.service)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in str(host) else host
    print(f"tova serve: {config.model_id} ({engine.n_seq} sequences, {cache} {size}, "
          f"KV {engine.kv_bytes / 2**20:.1f} MiB) on http://{shown}:{port}/v1",
          file=sys.stderr, flush=True)
    try:
        server.run(sockets=[sock])  # (re-raises the signal that stopped it once it has shut down)
    except KeyboardInterrupt:  # Ctrl-C (SIGINT) ends the server cleanly: exit status 0
        pass
    finally:
        sock.close()
        engine.close()
    return 0 if server.started else 1
