"""Soak: fixed memory over a long generation and a long chat.

    python bench/soak.py [--model smollm2-135m-instruct] [--tokens 200000] [--every 10000]
                         [--kv-size 256] [--chat-turns 500] [--threads 1] [--json PATH]

1. One sequence generates ``--tokens`` tokens (sampled, temperature 0.8, end of generation
   ignored) with kv_size 256, policy tova and cache_index positions, so it runs far past the
   model's trained context. The process's resident set (VmRSS) is read at the start and every
   ``--every`` tokens; the report gives each reading and the growth from the first reading after
   warm-up (10k tokens) to the end.
2. A chat of ``--chat-turns`` turns on the same engine (Engine.chat with the whole history each
   turn, as an OpenAI-style client sends it; 24 tokens a reply): RSS every 50 turns, and every
   reply must be non-empty text.

Writes every reading to ``--json`` (default bench/results/soak.json).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import tova

HERE = Path(__file__).resolve().parent


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tokens", type=int, default=200_000)
    ap.add_argument("--every", type=int, default=10_000)
    ap.add_argument("--kv-size", type=int, default=256)
    ap.add_argument("--chat-turns", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=str(HERE / "results" / "soak.json"))
    a = ap.parse_args()

    out: dict = {"model": a.model, "kv_size": a.kv_size, "tokens": a.tokens, "readings": [], "chat": []}
    e = tova.Engine(a.model, kv_size=a.kv_size, policy="tova", positions="cache_index", n_threads=a.threads)
    print(f"engine: {a.model}, kv_size {a.kv_size}, KV store {e.kv_bytes / 2**20:.1f} MiB, "
          f"kernels {tova._core.kernel_isa()}")
    start = rss_mib()
    out["readings"].append({"tokens": 0, "rss_mib": start})
    print(f"| tokens | RSS MiB | tokens/s |\n|---:|---:|---:|\n| 0 | {start:.1f} | |")
    t0 = time.time()
    last_t, last_n, next_mark = t0, 0, a.every
    for _ in e.stream("Once upon a time", max_tokens=a.tokens, ignore_eos=True, temperature=0.8, seed=7):
        n = e.n_past_of(0)
        if n >= next_mark:
            now = time.time()
            r = rss_mib()
            rate = (n - last_n) / (now - last_t)
            out["readings"].append({"tokens": n, "rss_mib": r, "tokens_per_s": rate})
            print(f"| {n} | {r:.1f} | {rate:.0f} |", flush=True)
            last_t, last_n, next_mark = now, n, next_mark + a.every
    end = rss_mib()
    stats = e.last_stats
    out["generation"] = {"completion_tokens": stats.get("completion_tokens"), "seconds": time.time() - t0,
                         "rss_end_mib": end, "evictions": stats.get("evictions")}
    warm = next((r["rss_mib"] for r in out["readings"] if r["tokens"] >= a.every), start)
    print(f"\ngenerated {stats.get('completion_tokens')} tokens; RSS start {start:.1f} MiB, after "
          f"{a.every} tokens {warm:.1f} MiB, end {end:.1f} MiB: {end - warm:+.2f} MiB after warm-up")

    if a.chat_turns:
        msgs = []
        print("\n| turn | RSS MiB | reply |\n|---:|---:|---|")
        for turn in range(1, a.chat_turns + 1):
            msgs.append({"role": "user", "content": f"Turn {turn}: name a color and a number."})
            reply = e.chat(msgs, max_tokens=24, temperature=0.7, seed=turn)
            if not reply.strip():
                raise SystemExit(f"turn {turn}: empty reply")
            msgs.append({"role": "assistant", "content": reply})
            if turn % 50 == 0 or turn == 1:
                r = rss_mib()
                out["chat"].append({"turn": turn, "rss_mib": r, "reply": reply})
                print(f"| {turn} | {r:.1f} | {reply.strip()[:60]!r} |", flush=True)
        history_chars = sum(len(m["content"]) for m in msgs)
        msgs.clear()
        e.reset_chat()
        r = rss_mib()
        out["chat_end"] = {"turns": a.chat_turns, "history_chars": history_chars, "rss_mib": r}
        print(f"\nchat of {a.chat_turns} turns ({history_chars} characters of history) answered every "
              f"turn; RSS after dropping the history: {r:.1f} MiB")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
