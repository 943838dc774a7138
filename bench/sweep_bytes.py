"""Perplexity against KV bytes per sequence (``python bench/policy_sweep.py --by-bytes``).

Edge users fix a memory budget in bytes, not tokens. Two ways to spend it: keep fewer tokens
(an evicting policy) or store each token in fewer bits (a quantized KV type). This sweep crosses
both on the text and segments of the token sweep (4096-token segments, exact prefill, every token
after the first of a segment scored):

- the full cache (n_ctx = the segment) in each KV type: llama.cpp's way to save memory;
- each evicting policy in each KV type at the largest kv_size whose store fits a fraction of
  the full f16 cache's bytes (``--fractions 1/8,1/16``), bytes counted exactly as the engine
  holds them (``Engine.kv_bytes_per_seq``: K and V rows, the working slots of one prefill chunk,
  the per-slot tables).

A KV type ``K/V`` sets keys and values apart (``q8_0/q4_1``: 8-bit keys, 4-bit values);
``K/V+LK/LV@H`` adds a lower tier (``q8_0/q4_1+q4_0@200``: 200 tokens in q8_0/q4_1, the rest of the
cache in q4_0; ``kv_lo_type`` / ``kv_hi_size``). Rows go to ``OUT.csv`` as measured (resumable);
``OUT.png`` plots PPL against bytes.
"""
from __future__ import annotations

import csv
import time
from fractions import Fraction
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import tova
from tova.perplexity import perplexity

FIELDS = ["model", "text", "policy", "kv_type", "kv_size", "kv_bytes", "fraction_of_full_f16",
          "segment", "segments", "n_scored", "ppl", "stderr", "seconds"]


def kv_settings(kv_type: str) -> Dict[str, object]:
    """``K/V+LK/LV@H`` as Engine settings (kv_type_k, kv_type_v, and kv_lo_type, kv_hi_size with a
    lower tier); bench/kv_decode.py turns them into CLI flags."""
    upper, _, lower = kv_type.partition("+")
    k, _, v = upper.partition("/")
    out: Dict[str, object] = {"kv_type_k": k, "kv_type_v": v or k}
    if lower:
        lo_type, _, hi = lower.partition("@")
        out.update(kv_lo_type=lo_type, kv_hi_size=int(hi))
    return out


def _smallest(kv_type: str, chunk: int) -> int:
    """The smallest cache the sweep tries: 16, or beyond the upper tier and its working slots."""
    hi = kv_settings(kv_type).get("kv_hi_size")
    return 16 if hi is None else (int(hi) + chunk + 8) // 8 * 8  # type: ignore[call-overload]


def store_bytes(model: str, policy: str, kv_type: str, size: int, chunk: int) -> int:
    """Exact bytes of one sequence's store for these settings (the engine's own count)."""
    kw = dict(policy="full", n_ctx=size) if policy == "full" else dict(policy=policy, kv_size=size)
    with tova.Engine(model, chunk=chunk, n_threads=1, **kv_settings(kv_type), **kw) as e:
        return e.kv_bytes_per_seq


def largest_fitting(model: str, policy: str, kv_type: str, budget: int, chunk: int,
                    limit: int) -> Optional[int]:
    """The largest kv_size (multiple of 8, at least 16) whose store fits ``budget`` bytes."""
    lo, hi = _smallest(kv_type, chunk), limit
    if store_bytes(model, policy, kv_type, lo, chunk) > budget:
        return None
    while hi - lo > 8:
        mid = (lo + hi) // 2 // 8 * 8
        if store_bytes(model, policy, kv_type, mid, chunk) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


def plan(a) -> Tuple[List[Tuple[str, str, str, int]], int]:
    """(policy, kv_type, kv_size or 'full', bytes) of every cell, and the full f16 cache's bytes."""
    full_f16 = store_bytes(a.model, "full", "f16", a.segment, a.chunk)
    cells = [("full", t, "full", store_bytes(a.model, "full", t, a.segment, a.chunk))
             for t in a.kv_types.split(",")]
    for frac in a.fractions.split(","):
        budget = int(full_f16 * Fraction(frac))
        for policy in a.policies.split(","):
            if policy == "full":
                continue
            for t in a.kv_types.split(","):
                k = largest_fitting(a.model, policy, t, budget, a.chunk, a.segment)
                if k is None:
                    print(f"{policy} {t}: nothing fits {frac} of the full f16 cache ({budget} bytes)")
                    continue
                if k >= a.segment - a.chunk:  # keeps the whole segment: the full cache's row
                    continue
                cell = (policy, t, str(k), store_bytes(a.model, policy, t, k, a.chunk))
                if cell not in cells:
                    cells.append(cell)
    return cells, full_f16


def run(a) -> Path:
    csv_path = Path(f"{a.out}.csv")
    done = set()
    if csv_path.exists():
        with csv_path.open() as f:
            done = {(r["policy"], r["kv_type"], r["kv_size"]) for r in csv.DictReader(f)}
    from policy_sweep import text_tokens

    ids = text_tokens(a)
    need = len(ids)
    cells, full_f16 = plan(a)
    new = not csv_path.exists()
    with csv_path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        for policy, kv_type, kv, nbytes in cells:
            if (policy, kv_type, kv) in done:
                continue
            t0 = time.time()
            kw = dict(policy="full") if policy == "full" else dict(policy=policy, kv_size=int(kv))
            r = perplexity(a.model, ids[:need], context=a.segment, chunks=a.segments, score_from=0,
                           add_bos=None, progress=False, n_threads=a.threads, chunk=a.chunk,
                           **kv_settings(kv_type), **kw)
            w.writerow(dict(model=a.model, text=Path(a.text).name, policy=policy, kv_type=kv_type,
                            kv_size=kv, kv_bytes=nbytes, fraction_of_full_f16=f"{nbytes / full_f16:.4f}",
                            segment=a.segment, segments=a.segments, n_scored=r.n_scored,
                            ppl=f"{r.ppl:.4f}", stderr=f"{r.stderr:.4f}",
                            seconds=f"{time.time() - t0:.1f}"))
            f.flush()
            print(f"{policy:>6} {kv_type:>10} kv={kv:>5} {nbytes / 2**20:7.2f} MiB "
                  f"({nbytes / full_f16:.3f} of full f16): PPL {r.ppl:.3f} ({time.time() - t0:.0f} s)",
                  flush=True)
    return csv_path


def table(csv_path: Path) -> str:
    """One row per cell, sorted by bytes: the gap to the full f16 cache in the last column."""
    rows = list(csv.DictReader(csv_path.open()))
    base = next((float(r["ppl"]) for r in rows if r["policy"] == "full" and r["kv_type"] == "f16"), None)
    out = ["| policy | kv_type (K/V) | kv_size | KV bytes / sequence | of full f16 | PPL | vs full f16 |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: -int(r["kv_bytes"])):
        gap = "" if base is None else f"{100 * (float(r['ppl']) / base - 1):+.2f} %"
        out.append(f"| {r['policy']} | {r['kv_type']} | {r['kv_size']} | {int(r['kv_bytes']) / 2**20:.2f} MiB "
                   f"| {float(r['fraction_of_full_f16']):.3f} | {float(r['ppl']):.2f} | {gap} |")
    return "\n".join(out)


def plot(csv_path: Path, png_path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(csv_path.open()))
    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    series: Dict[Tuple[str, str], List[Tuple[float, float]]] = {}
    for r in rows:
        series.setdefault((r["policy"], r["kv_type"]), []).append(
            (int(r["kv_bytes"]) / 2**20, float(r["ppl"])))
    # One colour per KV type, one line style and marker per policy.
    types = sorted({t for _, t in series})
    colour = {t: plt.get_cmap("tab10")(i % 10) for i, t in enumerate(types)}
    look = {"full": dict(marker="s", linestyle="none"), "tova": dict(marker="o", linestyle="-")}
    for (policy, kv_type), pts in sorted(series.items()):
        pts.sort()
        style = look.get(policy, dict(marker="^", linestyle="--"))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=f"{policy} {kv_type}", color=colour[kv_type],
                **style)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("KV bytes per sequence (MiB)")
    ax.set_ylabel("perplexity")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
