"""Decode speed by KV element type, in one run: ``tova bench`` tg at a depth with each type.

    python bench/kv_decode.py [--model smollm2-135m-instruct] [--kv-size 512] [--depth 4096]
                              [--types f16,q8_0,q4_0,q4_1,q8_0/q4_1] [--threads 2] [--reps 3]

Every configuration generates ``--gen`` tokens after ``--depth`` tokens of history (so the store
is full: the policy evicts every step), with policy tova at ``--kv-size`` and, as the reference
point, the full cache (n_ctx = depth + gen) in f16. A type may carry a lower tier and its own
cache size: ``q8_0/q4_1+q4_0@100:1672`` is kv_size 1672 with 100 tokens (plus the working slots)
in q8_0/q4_1 and the rest in q4_0 (``--kv-lo-type``, ``--kv-hi-size``); ``--policy`` picks the
policy (default tova). Prints a markdown table (tokens/s, KV bytes of the sequence) and writes
the rows to ``--json``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def bench(binary: str, a, kv_type: str, policy: str) -> dict:
    from sweep_bytes import kv_settings  # the one parser of "K/V+LK/LV@H"

    kv_type, _, size = kv_type.partition(":")
    kv = kv_settings(kv_type)
    cmd = [binary, "bench", "-m", a.model, "-p", "0", "-n", str(a.gen), "-d", str(a.depth), "-r", str(a.reps),
           "-t", str(a.threads), "--policy", policy, "-ctk", str(kv["kv_type_k"]), "-ctv", str(kv["kv_type_v"]),
           "--json"]
    if "kv_lo_type" in kv:
        cmd += ["--kv-lo-type", str(kv["kv_lo_type"]), "--kv-hi-size", str(kv["kv_hi_size"])]
    if policy != "full":
        cmd += ["--kv-size", size or str(a.kv_size)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    (row,) = json.loads(out.stdout)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--kv-size", type=int, default=512)
    ap.add_argument("--depth", type=int, default=4096)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--types", default="f16,q8_0,q4_0,q4_1,q8_0/q4_1")
    ap.add_argument("--policy", default="tova")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default=str(HERE / "results" / "kv_decode.json"))
    a = ap.parse_args(argv)
    from tova._cli import binary

    exe = str(binary())
    rows = [dict(bench(exe, a, "f16", "full"), config="full f16")]
    for t in a.types.split(","):
        name = t if ":" in t else f"{a.kv_size} {t}"
        rows.append(dict(bench(exe, a, t, a.policy), config=f"{a.policy} {name}"))
    first = rows[1]["config"]
    print(f"| configuration ({a.model}, depth {a.depth}, {a.threads} threads) | KV bytes | tg{a.gen} tokens/s "
          f"| vs {first} |")
    print("|---|---:|---:|---:|")
    base = rows[1]["avg_ts"]
    for r in rows:
        print(f"| {r['config']} | {r['kv_bytes'] / 2**20:.1f} MiB | {r['avg_ts']:.1f} ± {r['stddev_ts']:.1f} "
              f"| {r['avg_ts'] / base:.2f}x |")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
