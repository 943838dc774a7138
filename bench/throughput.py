"""The paper's Table 1 on this machine: under one fixed KV budget, how many sequences fit and the
total decode tokens/s of all of them, for the full cache against TOVA with a smaller store.

    python bench/throughput.py                     # SmolLM2 and Gemma 3, 2 threads
    python bench/throughput.py --models smollm2-135m-instruct --threads 2 --gen 128

For each model and configuration it runs ``tova bench --kv-budget B`` (see cpp/tools/bench_cli.cpp):
the engine takes as many sequences as fit in B bytes of KV store (exact bytes); sequence 0 reads a
random prompt of ``--prompt`` tokens (read with chunked prefill: only the decode is timed) and every
other sequence starts as a copy of it, so each holds the same long context; then all of them
generate ``--gen`` tokens together through the scheduler (greedy, end of generation ignored), and
the total generated tokens per second is reported. The full cache (n_ctx 4096) holds the whole
context; TOVA at kv_size K keeps K tokens per layer (plus one prompt chunk of working slots).

Writes ``bench/results/throughput.csv`` and prints a markdown table for RESULTS.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# The budget per model: what two full-cache sequences of n_ctx 4096 take (rounded up).
BUDGETS = {"smollm2-135m-instruct": "192MiB", "gemma-3-270m": "48MiB"}
CONFIGS = [("full", None), ("tova", 512), ("tova", 256)]


def run_bench(binary: str, model: Path, budget: str, policy: str, kv_size, kv_type, args) -> dict:
    cmd = [binary, "bench", "-m", str(model), "--kv-budget", budget, "--policy", policy,
           "-p", str(args.prompt), "-n", str(args.gen), "-r", "1", "-t", str(args.threads),
           "--prefill", "chunked", "--device", args.device, "--json"]
    cmd += ["--ctx", "4096"] if policy == "full" else ["--kv-size", str(kv_size)]
    if kv_type:  # "K/V" or one type for both
        k, _, v = kv_type.partition("/")
        cmd += ["--kv-type-k", k, "--kv-type-v", v or k]
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}:\n{out.stderr.strip()}")
    row = json.loads(out.stdout)[0]
    row["wall_s"] = time.time() - t0
    row["command"] = " ".join(cmd)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(BUDGETS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=3072, help="context each sequence holds (tokens)")
    ap.add_argument("--gen", type=int, default=128, help="tokens each sequence generates")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "throughput.csv")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--budget", default=None, help="KV budget for every model (default: per model, above)")
    ap.add_argument("--quantized-kv", default=None, metavar="K/V",
                    help="also TOVA kv_size 512 with keys and values of these types (e.g. q8_0/q4_1)")
    args = ap.parse_args()

    from tova import _cli, models

    binary = str(_cli.binary())
    rows = []
    for name in args.models:
        path = models.resolve(name)
        budget = args.budget or BUDGETS.get(name, "192MiB")
        base = None
        configs = [(p, kv, None) for p, kv in CONFIGS]
        if args.quantized_kv:
            configs.append(("tova", 512, args.quantized_kv))
        for policy, kv, kv_type in configs:
            r = run_bench(binary, path, budget, policy, kv, kv_type, args)
            base = base or r["avg_ts"]
            label = "full (n_ctx 4096)" if policy == "full" else f"{policy} kv_size {kv}"
            if kv_type:
                label += f", K/V {kv_type}"
            rows.append({"model": name, "budget": budget, "config": label, "n_seq": r["n_seq"],
                         "kv_bytes": r["kv_bytes"], "tokens_per_s": round(r["avg_ts"], 1),
                         "vs_full": round(r["avg_ts"] / base, 2), "threads": r["n_threads"],
                         "prompt": args.prompt, "gen": args.gen, "wall_s": round(r["wall_s"], 1),
                         "command": r["command"]})
            print(f"{name}: {label}: {r['n_seq']} sequences, {r['avg_ts']:.1f} tokens/s", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("| model | KV budget | cache | sequences that fit | KV in use | total decode tokens/s | vs full |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['budget']} | {r['config']} | {r['n_seq']} | "
              f"{r['kv_bytes'] / 2**20:.1f} MiB | {r['tokens_per_s']} | {r['vs_full']}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
