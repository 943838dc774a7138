"""Load test of ``tova serve`` on loopback (127.0.0.1 only), bounded in count and time.

1. Solo greedy answers: each of the ``--clients`` chat prompts run alone in an Engine (one
   sequence), before the server starts.
2. ``tova serve`` as a subprocess with ``--n-seq``; ``--clients`` streaming chat clients at once,
   each with its own prompt: every client must receive exactly its solo answer. Reports p50/p99
   time to first token and total completion tokens/s over the wall time of the phase.
3. RSS of the server (VmRSS) before and after ``--short`` short requests (``max_tokens`` 1,
   ``--short-concurrency`` at a time).

Example (the numbers in bench/RESULTS.md)::

    python bench/load_test.py -m smollm2-135m-instruct --clients 64 --n-seq 8 --max-tokens 16 \\
        --short 1000 --threads 2
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import httpx

HOST = "127.0.0.1"  # loopback only

TOPICS = ["rivers", "owls", "bread", "volcanoes", "chess", "tea", "bridges", "comets", "maps",
          "violins", "glaciers", "honey", "kites", "lighthouses", "mushrooms", "robots"]
ASKS = ["Give one fact about {}.", "Write a short line about {}.", "Why do people like {}?",
        "Describe {} in a few words."]


def prompts(n: int) -> List[List[Dict[str, str]]]:
    """n different one-turn conversations."""
    out = []
    for i in range(n):
        text = ASKS[i % len(ASKS)].format(TOPICS[(i // len(ASKS)) % len(TOPICS)])
        if i >= len(ASKS) * len(TOPICS):
            text += f" ({i})"
        out.append([{"role": "user", "content": text}])
    return out


def solo_answers(model: str, convs: List[List[Dict[str, str]]], max_tokens: int, kv_size: int,
                 threads: int) -> List[str]:
    import tova
    from tova import chat as tchat

    with tova.Engine(model, n_seq=1, kv_size=kv_size, n_threads=threads) as e:
        out = []
        for m in convs:
            ids = e.tokenize(tchat.render_prompt(e, m), add_bos=False, special=True)
            out.append(e.submit(ids, max_tokens=max_tokens, temperature=0.0, top_p=1.0, top_k=0,
                                min_p=0.0).result())
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def stream_one(client: httpx.AsyncClient, messages: List[Dict[str, str]], max_tokens: int,
                     t0: float) -> Tuple[str, Optional[float], int]:
    """(text, seconds to the first piece, completion tokens)."""
    body = {"model": "bench", "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    text, ttft, tokens = [], None, 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"status {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
            for c in chunk.get("choices", []):
                piece = c["delta"].get("content")
                if piece:
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    text.append(piece)
    return "".join(text), ttft, tokens


async def short_requests(client: httpx.AsyncClient, count: int, concurrency: int) -> int:
    sem = asyncio.Semaphore(concurrency)
    failures = 0

    async def one(i: int) -> None:
        nonlocal failures
        async with sem:
            r = await client.post("/v1/chat/completions", json={
                "model": "bench", "messages": [{"role": "user", "content": f"Hi {i}"}],
                "max_tokens": 1, "temperature": 0})
            if r.status_code != 200:
                failures += 1

    await asyncio.gather(*(one(i) for i in range(count)))
    return failures


def pct(xs: List[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))]


async def run(args: argparse.Namespace, base: str, pid: int, want: List[str],
              convs: List[List[Dict[str, str]]]) -> Dict[str, Any]:
    limits = httpx.Limits(max_connections=args.clients + 8, max_keepalive_connections=args.clients + 8)
    async with httpx.AsyncClient(base_url=base, timeout=args.time_limit, limits=limits) as client:
        t0 = time.perf_counter()
        results = await asyncio.wait_for(asyncio.gather(
            *(stream_one(client, m, args.max_tokens, t0) for m in convs)), args.time_limit)
        wall = time.perf_counter() - t0
        texts = [r[0] for r in results]
        ttfts = [r[1] for r in results if r[1] is not None]
        tokens = sum(r[2] for r in results)
        wrong = [i for i, (got, w) in enumerate(zip(texts, want)) if got != w]

        rss_before = rss_kib(pid)
        t1 = time.perf_counter()
        failures = await asyncio.wait_for(short_requests(client, args.short, args.short_concurrency),
                                          args.time_limit)
        short_wall = time.perf_counter() - t1
        rss_after = rss_kib(pid)
        # The same again: what a second round adds shows a leak, not the first round's warm-up
        # (worker threads created on demand, allocator arenas reaching their high-water mark).
        rss_again = rss_after
        if args.short_rounds > 1:
            for _ in range(args.short_rounds - 1):
                failures += await asyncio.wait_for(
                    short_requests(client, args.short, args.short_concurrency), args.time_limit)
            rss_again = rss_kib(pid)
    return {
        "clients": args.clients, "n_seq": args.n_seq, "max_tokens": args.max_tokens,
        "correct": len(texts) - len(wrong), "wrong": wrong,
        "ttft_p50_s": round(pct(ttfts, 50), 3), "ttft_p99_s": round(pct(ttfts, 99), 3),
        "ttft_max_s": round(max(ttfts), 3) if ttfts else None,
        "completion_tokens": tokens, "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "short_requests": args.short, "short_failures": failures, "short_wall_s": round(short_wall, 2),
        "short_requests_per_s": round(args.short / short_wall, 1),
        "rss_before_short_mib": round(rss_before / 1024, 1),
        "rss_after_short_mib": round(rss_after / 1024, 1),
        "short_rounds": args.short_rounds,
        "rss_after_last_round_mib": round(rss_again / 1024, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", default="smollm2-135m-instruct")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--n-seq", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--kv-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--short", type=int, default=1000)
    ap.add_argument("--short-concurrency", type=int, default=8)
    ap.add_argument("--short-rounds", type=int, default=2, help="rounds of --short requests (1..5)")
    ap.add_argument("--time-limit", type=float, default=600.0, help="seconds per phase at most")
    ap.add_argument("--json", action="store_true", help="print the result as JSON only")
    args = ap.parse_args()
    if not 1 <= args.short_rounds <= 5:
        ap.error("--short-rounds in 1..5 (the test is bounded)")
    if not 1 <= args.clients <= 256 or not 0 <= args.short <= 5000:
        ap.error("--clients in 1..256 and --short in 0..5000 (the test is bounded)")

    convs = prompts(args.clients)
    t = time.perf_counter()
    want = solo_answers(args.model, convs, args.max_tokens, args.kv_size, args.threads)
    solo_s = time.perf_counter() - t

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tova", "serve", "-m", args.model, "--model-id", "bench",
         "--host", HOST, "--port", str(port), "--n-seq", str(args.n_seq), "--kv-size",
         str(args.kv_size), "--threads", str(args.threads), "--max-queue", str(args.clients),
         "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=dict(os.environ))
    base = f"http://{HOST}:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.3)
        rss_start = rss_kib(proc.pid)
        result = asyncio.run(run(args, base, proc.pid, want, convs))
        result["rss_start_mib"] = round(rss_start / 1024, 1)
        result["solo_s"] = round(solo_s, 1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:24s} {v}")
    return 0 if not result["wrong"] and not result["short_failures"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
