"""Bytes of policy input the CUDA backend copies back to the host, with the built-in policies
run on the device (the default) and on the host from the head mean (TOVA_CUDA_VICTIMS=0), and
whether both keep the same positions (bench/RESULTS.md, "The built-in policies on the device").

    python bench/cuda_policy_bytes.py [--model smollm2-135m-instruct] [--kv-size 64] [--steps 4]

Needs a build with the CUDA backend (a GPU, or the simulator of tests/cuda_sim.sh: correct
counts, no speed).
"""
from __future__ import annotations

import argparse
import os

import tova
from tova.models import resolve

TEXT = "The history of the printing press begins in the fifteenth century, when a goldsmith of Mainz, "


def run(path: str, policy: str, kv_size: int, steps: int, on_device: bool) -> tuple[int, int, list]:
    os.environ["TOVA_CUDA_VICTIMS"] = "1" if on_device else "0"  # read when the engine is made
    with tova.Engine(path, device="cuda", policy=policy, kv_size=kv_size, chunk=32) as e:
        ids = e.tokenize(TEXT * 8)[: kv_size - steps + 1]  # the cache fills at the last step
        e.eval(ids)
        c0 = e._e._backend_counters()
        for t in ids[:steps]:
            e.eval([t])
        c1 = e._e._backend_counters()
        kept = [e.kv_positions(layer).tolist() for layer in range(int(e._info["n_layer"]))]
        return (c1["cuda_policy_bytes_to_host"] - c0["cuda_policy_bytes_to_host"],
                c1["cuda_victims_selected"] - c0["cuda_victims_selected"], kept)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--kv-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    a = ap.parse_args()
    path = resolve(a.model, download=False)
    print(f"| policy | {a.steps} steps, on the device | victims | on the host (head mean back) | same kept |")
    print("|---|---:|---:|---:|---|")
    for policy in ("tova", "h2o", "tova_ema"):
        dev = run(path, policy, a.kv_size, a.steps, True)
        host = run(path, policy, a.kv_size, a.steps, False)
        print(f"| {policy} | {dev[0]} B | {dev[1]} | {host[0]} B | {dev[2] == host[2]} |", flush=True)


if __name__ == "__main__":
    main()
