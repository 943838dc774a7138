"""tova against llama.cpp on the same machine, files, threads and settings, in one run.

    python bench/compare_llamacpp.py [--models smollm2-135m-instruct gemma-3-270m ...]
        [--threads 1 2] [--reps 3] [--depth 4096] [--depth-models smollm2-135m-instruct]
        [--contention] [--json results/compare_llamacpp.json]

For each model and thread count it runs `llama-bench` and `tova bench` one after the other and
prints a markdown table of tokens/s and ratios (tova / llama.cpp):

- pp512 and tg128, both engines with the full cache. Both read the prompt 512 tokens per forward
  pass (llama-bench's default ubatch is 512; tova bench gets --chunk 512).
- tg128 at depth D (after D tokens of history): llama.cpp's full cache against tova with
  kv_size 512 (policy tova), the fixed-memory case; and against tova's full cache (n_ctx D + 256),
  the same work for both.
- With --contention, tg16 (one repetition) with two CPU-bound processes running beside it.

It also measures the machine's read bandwidth (bench/membw.c, built here with cc) and reports
each tg128 as a fraction of the bandwidth limit: bytes one generated token reads (every weight
matrix of the forward pass, the output matrix whole, one row of the token embedding; plus the
K/V cache at the mean position) divided by the measured bandwidth.

llama.cpp is built from the copy vendored in the llama-cpp-python sdist on PyPI (the version the
reference data in shared/reference was made with) in $LLAMACPP_DIR (default /tmp/llamacpp);
nothing of it is kept in this repository.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
VERSION = "0.3.36"
MODELS = ["smollm2-135m-instruct", "gemma-3-270m", "qwen2.5-coder-1.5b-instruct"]


def sh(cmd: list[str]) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return r.stdout


def llama_bench(root: Path) -> Path:
    src = root / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
    exe = src / "build" / "bin" / "llama-bench"
    if exe.exists():
        return exe
    root.mkdir(parents=True, exist_ok=True)
    # (pip reads the sdist's metadata in an isolated environment: its build backend need not be here)
    sh([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        f"llama-cpp-python=={VERSION}", "-d", str(root)])
    with tarfile.open(root / f"llama_cpp_python-{VERSION}.tar.gz") as tar:
        tar.extractall(root)
    sh(["cmake", "-S", str(src), "-B", str(src / "build"), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
        "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DGGML_NATIVE=ON"])
    sh(["cmake", "--build", str(src / "build"), "--target", "llama-bench", "llama-perplexity"])
    return exe


def read_bandwidth(threads: int) -> float:
    exe = Path(os.environ.get("TMPDIR", "/tmp")) / "tova-membw"
    if not exe.exists():
        sh(["cc", "-O3", "-march=native", "-pthread", str(HERE / "membw.c"), "-o", str(exe)])
    return float(sh([str(exe), str(threads)]))


def bytes_per_token(model_path: str, mean_pos: int) -> float:
    """Bytes one decode step reads: every matrix of the forward pass once (the output matrix
    whole, the token embedding one row), small vectors, and the K/V rows up to mean_pos."""
    import gguf

    r = gguf.GGUFReader(model_path)
    names = {t.name for t in r.tensors}
    total = 0
    for t in r.tensors:
        n = int(t.n_bytes)
        if t.name == "token_embd.weight":
            rows = int(t.shape[-1]) if len(t.shape) > 1 else 1
            total += n // rows  # one row read by the lookup
            if "output.weight" not in names:
                total += n  # tied: the output matmul reads it all
            continue
        total += n
    arch = r.fields["general.architecture"].contents()
    f = lambda k: r.fields[f"{arch}.{k}"].contents()  # noqa: E731
    n_layer, n_head, n_kv = f("block_count"), f("attention.head_count"), f("attention.head_count_kv")
    head = r.fields[f"{arch}.attention.key_length"].contents() if f"{arch}.attention.key_length" in r.fields \
        else f("embedding_length") // n_head
    total += n_layer * 2 * n_kv * head * 2 * mean_pos  # f16 K and V
    return float(total)


def run_llama(exe: Path, model: str, threads: int, reps: int, p: int, n: int, depth: int = 0) -> dict:
    out = sh([str(exe), "-m", model, "-p", str(p), "-n", str(n), "-d", str(depth), "-t", str(threads),
              "-r", str(reps), "-o", "json"])
    rows = json.loads(out)
    return {("pp" if r["n_prompt"] else "tg"): r for r in rows}


def run_tova(model: str, threads: int, reps: int, p: int, n: int, depth: int = 0, extra=()) -> dict:
    out = sh(["tova", "bench", "-m", model, "-p", str(p), "-n", str(n), "-d", str(depth), "-t", str(threads),
              "-r", str(reps), "--chunk", "512", "--json", *extra])
    rows = json.loads(out)
    return {("pp" if r["n_prompt"] else "tg"): r for r in rows}


def burn(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100000):
            x = (x * 1103515245 + 12345) & 0xFFFFFFFF


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--depth", type=int, default=4096)
    ap.add_argument("--depth-models", nargs="*", default=None, help="models for the depth test (default: all)")
    ap.add_argument("--contention", action="store_true", help="also tg128 beside two CPU-bound processes")
    ap.add_argument("--json", default=None, help="write every row here")
    ap.add_argument("--llamacpp-dir", default=os.environ.get("LLAMACPP_DIR", "/tmp/llamacpp"))
    a = ap.parse_args()

    from tova import _core, models

    exe = llama_bench(Path(a.llamacpp_dir))
    print(f"kernels: tova {_core.kernel_isa()}; llama.cpp {VERSION} vendored, GGML_NATIVE=ON; "
          f"cpus: {os.cpu_count()}\n")
    bw = {t: read_bandwidth(t) for t in sorted(set(a.threads))}
    print("read bandwidth: " + ", ".join(f"{t} thread(s) {g:.1f} GB/s" for t, g in bw.items()) + "\n")
    rows = []
    print("| model | threads | test | llama.cpp t/s | tova t/s | ratio | tg % of bandwidth limit (tova / llama.cpp) |")
    print("|---|---:|---|---:|---:|---:|---:|")

    def report(name, threads, test, ll, tv, limit=None):
        ratio = tv["avg_ts"] / ll["avg_ts"]
        bwcol = f"{100 * tv['avg_ts'] / limit:.0f} % / {100 * ll['avg_ts'] / limit:.0f} %" if limit else ""
        print(f"| {name} | {threads} | {test} | {ll['avg_ts']:.1f} ± {ll['stddev_ts']:.1f} | "
              f"{tv['avg_ts']:.1f} ± {tv['stddev_ts']:.1f} | **{ratio:.2f}** | {bwcol} |", flush=True)
        rows.append({"model": name, "threads": threads, "test": test, "llama_cpp": ll["avg_ts"],
                     "llama_cpp_sd": ll["stddev_ts"], "tova": tv["avg_ts"], "tova_sd": tv["stddev_ts"],
                     "ratio": ratio, "bandwidth_limit_ts": limit})

    for name in a.models:
        path = str(models.resolve(name))
        for t in a.threads:
            ll = run_llama(exe, path, t, a.reps, 512, 128)
            tv = run_tova(path, t, a.reps, 512, 128)
            limit = bw[t] * 1e9 / bytes_per_token(path, 64)
            report(name, t, "pp512", ll["pp"], tv["pp"])
            report(name, t, "tg128", ll["tg"], tv["tg"], limit)
            if a.depth and (a.depth_models is None or name in a.depth_models):
                ll = run_llama(exe, path, t, a.reps, 0, 128, a.depth)
                tv = run_tova(path, t, a.reps, 0, 128, a.depth, ("--policy", "tova", "--kv-size", "512"))
                report(name, t, f"tg128 @ d{a.depth} (tova kv_size 512)", ll["tg"], tv["tg"])
                tv = run_tova(path, t, a.reps, 0, 128, a.depth, ("--policy", "full", "--ctx", str(a.depth + 256)))
                report(name, t, f"tg128 @ d{a.depth} (both full cache)", ll["tg"], tv["tg"])
            if a.contention:
                stop = mp.Event()
                burners = [mp.Process(target=burn, args=(stop,)) for _ in range(2)]
                for b in burners:
                    b.start()
                try:
                    # short: llama.cpp's spinning threads can fall hundreds of times slower here
                    ll = run_llama(exe, path, t, 1, 0, 16)
                    tv = run_tova(path, t, 1, 0, 16)
                finally:
                    stop.set()
                    for b in burners:
                        b.join()
                report(name, t, "tg16, 2 CPU-bound processes beside", ll["tg"], tv["tg"])
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"read_bandwidth_gbs": bw, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
