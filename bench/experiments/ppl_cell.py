"""One cell of the by-bytes sweep: perplexity of MODEL on TEXT (4 x 4096 tokens, exact prefill,
chunk 32), as `bench/sweep_bytes.py` computes it, printed as one JSON line.

    python bench/experiments/ppl_cell.py MODEL TEXT POLICY KV_TYPE KV_SIZE THREADS

KV_TYPE as in ``sweep_bytes.py``: ``q8_0``, ``q8_0/q4_1``, ``q8_0/q4_1+q4_0@100``.
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tova
from tova.perplexity import perplexity
from types import SimpleNamespace
from policy_sweep import text_tokens
model, text, policy, kvt, kv, threads = sys.argv[1:7]
a = SimpleNamespace(model=model, text=text, segment=4096, segments=4, chunk=32, threads=int(threads))
ids = text_tokens(a)
import sweep_bytes as sb
t0 = time.time()
r = perplexity(model, ids, context=4096, chunks=4, score_from=0, add_bos=None, progress=False,
               n_threads=int(threads), chunk=32, policy=policy, **sb.kv_settings(kvt), kv_size=int(kv))
print(json.dumps(dict(model=model, text=text.split('/')[-1], policy=policy, kvt=kvt, kv=kv, ppl=round(r.ppl,4), n=r.n_scored, s=round(time.time()-t0,1))))
