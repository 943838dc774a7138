"""Perplexity against multi-state size, per policy: the paper's central figure, on any GGUF.

The text is cut into `--segment` token segments (4096, the paper's setting), each read from an
empty cache through the policy's fixed store (exact prefill: as if fed one token at a time),
starting with BOS where the model adds one (its first token replaced, as llama-perplexity
does); every token after the first of each segment is scored; PPL is over all scored tokens of the
first `--segments` segments (at least 4). kv_size in {32, 64, 128, 256, 512, 1024} for window,
sink, h2o and tova, plus the full cache. Rows go to a CSV as they are measured (a run can be
stopped and resumed: rows already in the CSV are skipped), then a PNG plot (log-scale PPL, one
line per policy, the full cache dashed).

    python bench/policy_sweep.py --model smollm2-135m-instruct \\
        --text ../shared/texts/botchan_natsume_en1919.txt --out bench/results/smollm2_botchan

With ``--by-bytes`` the x axis is KV bytes per sequence instead of tokens: KV types crossed with
policies at fractions of the full f16 cache's bytes (see bench/sweep_bytes.py):

    python bench/policy_sweep.py --by-bytes --model smollm2-135m-instruct \\
        --kv-types f16,q8_0,q8_0/q4_1,q4_1 --fractions 1/8,1/16 --policies tova \\
        --out bench/results/smollm2_botchan_bytes
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import List

import tova
from tova.perplexity import perplexity

POLICIES = ("window", "sink", "h2o", "tova", "tova_ema")
FIELDS = ["model", "text", "policy", "kv_size", "segment", "segments", "n_scored", "ppl",
          "stderr", "seconds"]


def text_tokens(a) -> List[int]:
    """The first ``segments x segment`` tokens of the text (SystemExit when it is shorter)."""
    text = Path(a.text).read_text()
    with tova.Engine(a.model, policy="full", n_ctx=16, n_threads=1) as e:
        ids = e.tokenize(text)
    need = a.segment * a.segments
    if len(ids) < need:
        raise SystemExit(f"{a.text}: {len(ids)} tokens, {need} needed")
    return ids[:need]


def run(a) -> Path:
    csv_path = Path(f"{a.out}.csv")
    done = set()
    if csv_path.exists():
        with csv_path.open() as f:
            done = {(r["policy"], r["kv_size"]) for r in csv.DictReader(f)}
    ids = text_tokens(a)
    need = len(ids)
    policies = a.policies.split(",")
    configs = [("full", "full")] if "full" in policies else []
    # kv-major: every policy at one kv_size before the next, so that a run cut short (and
    # resumed later) already holds whole columns of the table
    configs += [(p, str(k)) for k in a.kv_sizes.split(",") for p in policies if p != "full"]
    new = not csv_path.exists()
    with csv_path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        for policy, kv in configs:
            if (policy, kv) in done:
                continue
            t0 = time.time()
            kw = dict(policy="full") if policy == "full" else dict(policy=policy, kv_size=int(kv))
            # add_bos=None: a model that adds BOS (Gemma 3) gets it at the start of every segment,
            # as llama-perplexity does (its first token replaced); SmolLM2 adds none.
            r = perplexity(a.model, ids[:need], context=a.segment, chunks=a.segments, score_from=0,
                           add_bos=None, progress=False, n_threads=a.threads, **kw)
            w.writerow(dict(model=a.model, text=Path(a.text).name, policy=policy, kv_size=kv,
                            segment=a.segment, segments=a.segments, n_scored=r.n_scored,
                            ppl=f"{r.ppl:.4f}", stderr=f"{r.stderr:.4f}",
                            seconds=f"{time.time() - t0:.1f}"))
            f.flush()
            print(f"{policy:>6} kv={kv:>5}: PPL {r.ppl:.3f} ± {r.stderr:.3f} "
                  f"({r.n_scored} tokens, {time.time() - t0:.0f} s)", flush=True)
    return csv_path


def plot(csv_path: Path, png_path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = list(csv.DictReader(csv_path.open()))
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    full = [float(r["ppl"]) for r in rows if r["policy"] == "full"]
    for policy in POLICIES:
        pts = sorted((int(r["kv_size"]), float(r["ppl"])) for r in rows if r["policy"] == policy)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=policy)
    if full:
        ax.axhline(full[0], linestyle="--", color="gray", label="full cache")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("kv_size (multi-state size C)")
    ax.set_ylabel("perplexity")
    ax.set_title(title, fontsize=10)
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)


def table(csv_path: Path) -> str:
    """The sweep as a markdown table: one row per kv_size, one column per policy (the best of
    each row in bold), the full cache in the last column."""
    rows = list(csv.DictReader(csv_path.open()))
    ppl = {(r["policy"], r["kv_size"]): float(r["ppl"]) for r in rows}
    full = next((v for (p, _), v in ppl.items() if p == "full"), None)
    policies = [p for p in POLICIES if any(q == p for q, _ in ppl)]
    sizes = sorted({int(k) for p, k in ppl if p != "full"})
    out = ["| kv_size | " + " | ".join(policies) + " | full |",
           "|---:|" + "---:|" * (len(policies) + 1)]
    for k in sizes:
        vals = [ppl.get((p, str(k))) for p in policies]
        best = min((v for v in vals if v is not None), default=None)
        cells = ["" if v is None else (f"**{v:.2f}**" if v == best else f"{v:.2f}") for v in vals]
        out.append(f"| {k} | " + " | ".join(cells) + f" | {'' if full is None else f'{full:.2f}'} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--text", default=str(Path(__file__).resolve().parents[1].parent / "shared" /
                                         "texts" / "botchan_natsume_en1919.txt"))
    ap.add_argument("--segment", type=int, default=4096)
    ap.add_argument("--segments", type=int, default=4)
    ap.add_argument("--kv-sizes", default="32,64,128,256,512,1024")
    ap.add_argument("--policies", default=",".join(("full",) + POLICIES),
                    help="comma-separated; 'full' is the full-cache baseline (two runs on parts of "
                         "the policies can write to separate CSVs, concatenated afterwards)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/results/sweep")
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--by-bytes", action="store_true", help="perplexity against KV bytes (sweep_bytes.py)")
    ap.add_argument("--kv-types", default="f16,q8_0,q8_0/q4_1,q4_1",
                    help="--by-bytes: KV types, K/V for different key and value types")
    ap.add_argument("--fractions", default="1/8,1/16", help="--by-bytes: of the full f16 cache's bytes")
    ap.add_argument("--chunk", type=int, default=32,
                    help="--by-bytes: prefill chunk (its working slots count in the bytes)")
    a = ap.parse_args(argv)
    if a.by_bytes:
        import sweep_bytes

        if a.policies == ",".join(("full",) + POLICIES):
            a.policies = "tova"
        csv_path = Path(f"{a.out}.csv") if a.plot_only else sweep_bytes.run(a)
        sweep_bytes.plot(csv_path, Path(f"{a.out}.png"),
                         f"{a.model}, {Path(a.text).stem}, {a.segments} x {a.segment} tokens, by KV bytes")
        print(sweep_bytes.table(csv_path))
        return 0
    csv_path = Path(f"{a.out}.csv") if a.plot_only else run(a)
    plot(csv_path, Path(f"{a.out}.png"), f"{a.model}, {Path(a.text).stem}, {a.segments} x {a.segment} tokens")
    print(table(csv_path))
    print(f"wrote {csv_path} and {a.out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
