"""Chosen cells of the by-bytes sweep (``policy_sweep.py --by-bytes``), one JSON line each.

    python bench/bytes_cells.py MODEL TEXT POLICY:KV_TYPE:FRACTION[,...] [--threads 2]

Each cell is read exactly as the sweep reads it (4 segments of 4096 tokens, exact prefill,
chunk 32, every token after a segment's first scored) at the largest kv_size whose store fits
FRACTION of the full f16 cache's bytes. KV_TYPE as in ``sweep_bytes.py``: ``q8_0``,
``q8_0/q4_1``, or with a lower tier ``q8_0/q4_1+q4_0@100``; POLICY ``full`` reads the whole
segment (FRACTION ignored).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sweep_bytes as sb  # noqa: E402
from policy_sweep import text_tokens  # noqa: E402
from tova.perplexity import perplexity  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("text")
    ap.add_argument("cells")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    seg = SimpleNamespace(model=a.model, text=a.text, segment=4096, segments=4, chunk=32, threads=a.threads)
    ids = text_tokens(seg)
    full = sb.store_bytes(a.model, "full", "f16", seg.segment, seg.chunk)
    for cell in a.cells.split(","):
        policy, kv_type, frac = cell.split(":")
        if policy == "full":
            kv, kw = "full", dict(policy="full")
            nbytes = sb.store_bytes(a.model, "full", kv_type, seg.segment, seg.chunk)
        else:
            kv = sb.largest_fitting(a.model, policy, kv_type, int(full * Fraction(frac)), seg.chunk, seg.segment)
            if kv is None:
                print(json.dumps(dict(cell=cell, error="nothing fits")), flush=True)
                continue
            kw = dict(policy=policy, kv_size=kv)
            nbytes = sb.store_bytes(a.model, policy, kv_type, kv, seg.chunk)
        t0 = time.time()
        r = perplexity(a.model, ids, context=seg.segment, chunks=seg.segments, score_from=0, add_bos=None,
                       progress=False, n_threads=a.threads, chunk=seg.chunk, **kw, **sb.kv_settings(kv_type))
        print(json.dumps(dict(model=a.model, text=Path(a.text).name, policy=policy, kv_type=kv_type, fraction=frac,
                              kv_size=kv, kv_bytes=nbytes, of_full_f16=round(nbytes / full, 4),
                              ppl=round(r.ppl, 4), seconds=round(time.time() - t0, 1))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
