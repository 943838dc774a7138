"""Decode speed per KV policy with a full store (issue "Fixed-memory KV store", benchmark).

For each policy and kv_size: read `--history` tokens of real text (so the store is full and
every step evicts), then time `--gen` greedy decode steps. Reports tokens/s (median of
`--reps`), the ratio to the window policy, and the cost of a Python policy (window written in
Python) against the built-in one.

    python bench/policy_decode.py --model smollm2-135m-instruct --threads 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import tova

TEXT = Path(__file__).resolve().parents[1].parent / "shared" / "texts" / "botchan_natsume_en1919.txt"


class PyWindow(tova.Policy):
    """The window policy in Python: measures the round-trip cost of a Python policy."""
    name = "py-window"
    needs_probs = False

    def select(self, layer, view):
        pos = view.pos
        cand = np.flatnonzero((pos >= 0) & (view.protect == 0))
        return cand[np.argsort(pos[cand], kind="stable")[: view.n_evict]].tolist()


def decode_tps(model, policy, kv_size, history, gen, reps, threads):
    """Reads the history once (the store is then full), then times `reps` runs of `gen` greedy
    decode steps that continue the same sequence (every step evicts)."""
    samples = []
    with tova.Engine(model, policy=policy, kv_size=kv_size, n_ctx=len(history) + gen * reps + 8,
                     prefill="chunked", n_threads=threads) as e:
        e.eval(history)  # chunked prefill: only the state matters here, not its exactness
        tok = history[-1]
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(gen):
                logits = e.eval([tok])
                tok = int(np.argmax(logits))
            samples.append(gen / (time.perf_counter() - t0))
    return statistics.median(samples), samples


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--history", type=int, default=4096)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kv-sizes", default="256,1024")
    ap.add_argument("--policies", default="window,sink,h2o,tova,python-window")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    a = ap.parse_args(argv)
    text = TEXT.read_text()
    with tova.Engine(a.model, policy="full", n_ctx=16, n_threads=1) as e:
        history = e.tokenize(text)[: a.history]
    rows = []
    print(f"| policy | kv_size | decode t/s (median of {a.reps}) | vs window |")
    print("| --- | ---: | ---: | ---: |")
    for kv in [int(x) for x in a.kv_sizes.split(",")]:
        base = None
        for name in a.policies.split(","):
            policy = PyWindow() if name == "python-window" else name
            tps, samples = decode_tps(a.model, policy, kv, history, a.gen, a.reps, a.threads)
            if name == "window":
                base = tps
            ratio = tps / base if base else float("nan")
            rows.append(dict(policy=name, kv_size=kv, history=a.history, gen=a.gen,
                             threads=a.threads, tps=tps, samples=samples, vs_window=ratio))
            print(f"| {name} | {kv} | {tps:.1f} | {ratio:.3f} |", flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
