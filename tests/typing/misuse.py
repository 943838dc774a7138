"""Mistakes a type checker must catch: each line carries the ``# type: ignore[code]`` of the
error mypy reports there, and tests/test_typing.py runs mypy with ``--warn-unused-ignores``, so a
mistake that stops being caught (an annotation loosened to Any, say) fails the test. Never run."""
from __future__ import annotations

import tova
from tova import Engine, PluginPolicy, SamplingParams

eng = Engine("smollm2-135m-instruct", n_threads=1)
eng.generate("hi", max_tokens="8")  # type: ignore[arg-type]
eng.generate("hi", max_token=8)  # type: ignore[call-arg]
eng.generate("hi", temprature=0.0)  # type: ignore[call-arg]
eng.generate("hi", temperature="hot")  # type: ignore[arg-type]
eng.stream("hi", top_k=1.5)  # type: ignore[arg-type]
eng.submit("hi", seed="1")  # type: ignore[arg-type]
eng.chat([{"role": "user", "content": "x"}], max_tokns=3)  # type: ignore[call-arg]
eng.generate_batch(["a"], temprature=0)  # type: ignore[call-arg]
Engine("smollm2-135m-instruct", n_thread=1)  # type: ignore[call-arg]
Engine("smollm2-135m-instruct", kv_size="128")  # type: ignore[arg-type]
SamplingParams(temperature="x")  # type: ignore[arg-type]
SamplingParams(temprature=0.1)  # type: ignore[call-arg]
SamplingParams().replace(temprature=0.1)  # type: ignore[call-arg]
SamplingParams.greedy(seeed=1)  # type: ignore[call-arg]
eng.perplexity("x y z").pplx  # type: ignore[attr-defined]
tova.models.resolve(123)  # type: ignore[arg-type]
tova.Engin("x")  # type: ignore[attr-defined]
PluginPolicy(3)  # type: ignore[arg-type]
eng.tokenize(b"bytes")  # type: ignore[arg-type]
n: int = eng.generate("hi")  # type: ignore[assignment]
