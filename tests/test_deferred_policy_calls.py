"""Policy calls deferred to the end of the step (what the CUDA backend does, kv_attention.h)
give exactly the results of calling them at once (what the CPU backend does).

TOVA_DEFER_POLICY_CALLS=1 makes the CPU backend defer too; each run is a fresh process (the
backend reads it at creation) that prints every layer's kept positions after every step and the
logits, for each built-in policy that evicts, a Python policy, chunked and exact prefill
(rows walked before the last one still finish at once), and three sequences batched.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from reference.synthetic import write_llama_gguf

SCRIPT = r"""
import json, sys
import numpy as np
import tova

class PyTova(tova.Policy):
    name = "pytova"
    def select(self, layer, view):
        pos, mean = view.pos, view.probs_mean
        ok = np.where((pos >= 0) & (view.protect == 0))[0]
        return ok[np.lexsort((pos[ok], mean[ok]))[: view.n_evict]].tolist()

path, out = sys.argv[1], {}
rng = np.random.default_rng(0)
ids = rng.integers(3, 384, 90).tolist()
for policy in ["tova", "h2o", "tova_ema", "sink", "window", "py"]:
    for prefill in ["exact", "chunked"]:
        pol = PyTova() if policy == "py" else policy
        with tova.Engine(path, policy=pol, kv_size=24, chunk=8, prefill=prefill, n_threads=1) as e:
            seen = []
            logits = e.eval(ids[:40], all_logits=True)
            seen.append(float(np.asarray(logits, np.float64).sum()))
            for t in ids[40:]:
                seen.append(float(np.asarray(e.eval([t]), np.float64).sum()))
                seen.append([e.kv_positions(l).tolist() for l in range(3)])
            out[f"{policy} {prefill}"] = seen
    with tova.Engine(path, policy=policy if policy != "py" else PyTova(), kv_size=16, n_seq=3, n_threads=1) as e:
        prompts = [ids[:5], ids[10:27], ids[30:63]]
        out[f"{policy} batch"] = e.generate_batch(prompts, max_tokens=24, temperature=0, ignore_eos=True)
print(json.dumps(out))
"""


def _run(path, defer: bool) -> dict:
    env = {**os.environ, "TOVA_DEFER_POLICY_CALLS": "1" if defer else "0"}
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_deferred_policy_calls_change_nothing(tmp_path):
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, seed=11, weight_type="Q8_0", n_layer=3)
    now, later = _run(path, False), _run(path, True)
    assert now.keys() == later.keys()
    for key in now:
        assert now[key] == later[key], key
    # the runs evicted: 90 tokens, 24 kept per layer
    assert all(len(layer) == 24 for layer in now["tova exact"][-1])
