"""Needle probe: a fact early in a long text, a question at the end; does the policy keep it?

For each trial a 5-digit passkey sentence is placed near the start of `--context` tokens of
filler prose (shared/texts), and the text ends with a question; the model continues greedily and
the trial counts as found when the passkey's digits appear in the first tokens of the answer.
Accuracy per policy and kv_size. The paper (and others) report that eviction hurts this kind of
retrieval: a fact seen long before the question is exactly what a bounded state drops.

    python bench/needle.py --model smollm2-135m-instruct --context 1024 --trials 5
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import tova

TEXTS = Path(__file__).resolve().parents[1].parent / "shared" / "texts"


def build_prompt(engine: tova.Engine, filler_ids, passkey: str, depth: int, context: int):
    needle = engine.tokenize(f" The secret passkey is {passkey}. Remember it: {passkey}. ")
    question = engine.tokenize(" Question: what is the secret passkey? Answer: the secret passkey is")
    room = context - len(needle) - len(question)
    body = filler_ids[:room]
    return body[:depth] + needle + body[depth:] + question


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--kv-sizes", default="64,128,256,512")
    ap.add_argument("--policies", default="window,sink,h2o,tova")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--depth", default="early", choices=("early", "late"),
                    help="early: the passkey within the first eighth of the text (the probe of "
                         "long-range recall); late: within the last eighth (a control: a bounded "
                         "cache should still hold it)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    text = (TEXTS / "botchan_natsume_en1919.txt").read_text()
    with tova.Engine(a.model, policy="full", n_ctx=16, n_threads=1) as e:
        filler = e.tokenize(text[20000:])
        trials = []
        for _ in range(a.trials):
            key = f"{rng.randrange(10000, 99999)}"
            if a.depth == "early":
                depth = rng.randrange(16, a.context // 8)
            else:
                depth = rng.randrange(a.context - a.context // 8, a.context - 64)
            trials.append((key, build_prompt(e, filler, key, depth, a.context)))
    configs = [("full", a.context + 16)] + [(p, int(k)) for p in a.policies.split(",")
                                              for k in a.kv_sizes.split(",")]
    rows = []
    print(f"| policy | kv_size | found / {a.trials} |")
    print("| --- | ---: | ---: |")
    for policy, kv in configs:
        kw = dict(n_ctx=kv) if policy == "full" else dict(kv_size=kv)
        found = 0
        with tova.Engine(a.model, policy=policy, n_threads=a.threads, **kw) as e:
            for key, ids in trials:
                answer = e.generate(ids, max_tokens=8, temperature=0)
                found += key in answer.replace(" ", "")
        rows.append(dict(policy=policy, kv_size=kv, context=a.context, depth=a.depth, trials=a.trials,
                         found=found))
        print(f"| {policy} | {kv if policy != 'full' else 'all'} | {found} |", flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
