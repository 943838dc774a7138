"""tova's perplexity against llama-perplexity's, on the same model, text and windows, in one run.

    python bench/perplexity_llamacpp.py [--text shared/texts/botchan_natsume_en1919.txt]
        [--rows smollm2-135m-instruct:512:8 gemma-3-270m:2048:2 ...] [--threads 2]
        [--json results/perplexity_llamacpp.json]

Each row MODEL:C:N runs `llama-perplexity -m MODEL -f TEXT -c C --chunks N -t T` (windows of C
tokens from an empty cache, BOS replacing each window's first token where the model adds BOS,
predictions C/2 .. C-2 scored) and `tova.perplexity.perplexity(MODEL, TEXT, context=C, chunks=N)`
with the full cache and tova's defaults (f16 cache, 8-bit activations), and prints both PPLs with
their ±, the relative difference, and llama.cpp's running PPL after each window.

The default rows are the ones the test suite compares against (tests/test_perplexity.py: the first
8 windows of 512 for SmolLM2, the first 2 of 2048 for Gemma 3, where its 512-key sliding window
slides) and the full-length rows of shared/reference/perplexity.md (40 x 512 and 10 x 2048,
20,480 tokens each), whose llama.cpp figures this run must reproduce: that shows the llama.cpp
built here is the one the shared reference was made with.

llama.cpp is built as in compare_llamacpp.py: from the copy vendored in the llama-cpp-python sdist
($LLAMACPP_DIR, default /tmp/llamacpp); nothing of it is kept in this repository.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
from pathlib import Path

from compare_llamacpp import VERSION, llama_bench

HERE = Path(__file__).resolve().parent
ROWS = ["smollm2-135m-instruct:512:8", "gemma-3-270m:2048:2",
        "smollm2-135m-instruct:512:40", "gemma-3-270m:2048:10"]
FINAL = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")
RUNNING = re.compile(r"\[(\d+)\]([0-9.]+),")


def llama_perplexity(exe: Path, model: str, text: Path, ctx: int, chunks: int, threads: int) -> dict:
    r = subprocess.run([str(exe), "-m", model, "-f", str(text), "-c", str(ctx), "--chunks", str(chunks),
                        "-t", str(threads)], capture_output=True, text=True)
    out = r.stdout + r.stderr
    m = FINAL.search(out)
    if r.returncode != 0 or not m:
        raise SystemExit(f"llama-perplexity failed ({r.returncode}):\n{out[-2000:]}")
    return {"ppl": float(m.group(1)), "stderr": float(m.group(2)),
            "running": [float(v) for _, v in RUNNING.findall(out)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(os.environ.get("TOVA_SHARED", HERE.parent.parent / "shared"))
    ap.add_argument("--text", default=str(shared / "texts" / "botchan_natsume_en1919.txt"))
    ap.add_argument("--rows", nargs="+", default=ROWS, help="MODEL:CONTEXT:CHUNKS")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write every row here")
    ap.add_argument("--llamacpp-dir", default=os.environ.get("LLAMACPP_DIR", "/tmp/llamacpp"))
    a = ap.parse_args()

    from tova import models
    from tova.perplexity import perplexity

    exe = llama_bench(Path(a.llamacpp_dir)).with_name("llama-perplexity")
    text = Path(a.text)
    print(f"llama-perplexity (llama.cpp vendored in llama-cpp-python {VERSION}), tova full cache; "
          f"{text.name}, {a.threads} threads\n")
    print("| model | C | windows | tokens | llama.cpp PPL | tova PPL | tova / llama.cpp - 1 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    for spec in a.rows:
        name, ctx, chunks = spec.split(":")
        path = str(models.resolve(name))
        ll = llama_perplexity(exe, path, text, int(ctx), int(chunks), a.threads)
        tv = perplexity(path, text.read_text("utf-8"), context=int(ctx), chunks=int(chunks),
                        n_threads=a.threads, progress=False)
        diff = tv.ppl / ll["ppl"] - 1
        print(f"| {name} | {ctx} | {tv.n_windows} | {tv.n_tokens} | {ll['ppl']:.4f} ± {ll['stderr']:.5f} | "
              f"{tv.ppl:.4f} ± {tv.stderr:.5f} | {100 * diff:+.2f} % |", flush=True)
        rows.append({"model": name, "context": int(ctx), "chunks": int(chunks), "n_windows": tv.n_windows,
                     "n_tokens": tv.n_tokens, "n_scored": tv.n_scored, "llama_cpp": ll["ppl"],
                     "llama_cpp_stderr": ll["stderr"], "llama_cpp_running": ll["running"],
                     "tova": tv.ppl, "tova_stderr": tv.stderr, "relative_difference": diff})
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"llama_cpp": VERSION, "text": text.name, "threads": a.threads,
                                            "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
