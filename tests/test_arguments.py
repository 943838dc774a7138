"""Every public Python function refuses a wrong type with TypeError and an out-of-range value with
ValueError, each naming the argument (the table in docs/python-arguments.md), and that table lists
every public function and argument."""
from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

import tova
from tova import chat as tchat
from tova import models as tmodels
from tova import perplexity as tppl

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-arguments.md"
pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def e(smollm2_path):
    with tova.Engine(smollm2_path, kv_size=32, n_seq=2, n_threads=1) as engine:
        yield engine


@pytest.fixture(scope="module")
def gguf(smollm2_path):
    return tova.GGUFFile(smollm2_path)


def _new(path, **kw):
    tova.Engine(path, **kw).close()


MSG = [{"role": "user", "content": "Hi"}]


def _policy(**attrs):
    def oldest(self, layer, view):
        pos = np.where(view.pos < 0, np.iinfo(np.int32).max, view.pos)
        return np.argsort(pos, kind="stable")[: view.n_evict].tolist()

    return type("P", (tova.Policy,), {"needs_probs": False, "select": oldest, **attrs})()


def _evicting(path, policy):
    with tova.Engine(path, policy=policy, kv_size=4, n_threads=1) as engine:
        engine.eval(list(range(10, 20)))

# (label, call(engine, gguf, model_path), exception, message pattern)
CASES = [
    # Engine(...)
    ("Engine model type", lambda e, g, m: tova.Engine(3), TypeError, r"model must be a path .* got int"),
    ("Engine model missing", lambda e, g, m: tova.Engine("/no/such.gguf"), FileNotFoundError, "not an existing file"),
    ("Engine kv_size float", lambda e, g, m: _new(m, kv_size=1.5), TypeError, "kv_size must be an int, got float"),
    ("Engine kv_size bool", lambda e, g, m: _new(m, kv_size=True), TypeError, "kv_size must be an int, got bool"),
    ("Engine kv_size 0", lambda e, g, m: _new(m, kv_size=0), ValueError, "kv_size must be >= 1"),
    ("Engine kv_size 2^40", lambda e, g, m: _new(m, kv_size=2**40), ValueError, "kv_size must be <= 2147483647"),
    ("Engine kv_size huge", lambda e, g, m: _new(m, kv_size=100000), ValueError, "kv_size"),
    ("Engine n_ctx str", lambda e, g, m: _new(m, n_ctx="64"), TypeError, "n_ctx must be an int"),
    ("Engine n_ctx 0", lambda e, g, m: _new(m, n_ctx=0), ValueError, "n_ctx must be >= 1"),
    ("Engine policy type", lambda e, g, m: _new(m, policy=3), TypeError, "policy must be a policy name"),
    ("Engine policy name", lambda e, g, m: _new(m, policy="lru"), ValueError, "unknown policy 'lru'"),
    ("Engine n_sink -1", lambda e, g, m: _new(m, n_sink=-1), ValueError, "n_sink must be >= 0"),
    ("Engine n_sink >= kv_size", lambda e, g, m: _new(m, policy="sink", kv_size=8, n_sink=8), ValueError, "n_sink"),
    ("Engine kv_type type", lambda e, g, m: _new(m, kv_type=8), TypeError, "kv_type must be a str, got int"),
    ("Engine kv_type name", lambda e, g, m: _new(m, kv_type="q3"), ValueError, "unknown kv_type 'q3'"),
    ("Engine kv_type_k name", lambda e, g, m: _new(m, kv_type_k="q3"), ValueError, "unknown kv_type_k 'q3'"),
    ("Engine kv_type_v name", lambda e, g, m: _new(m, kv_type_v="bogus"), ValueError, "unknown kv_type_v 'bogus'"),
    ("Engine prefill type", lambda e, g, m: _new(m, prefill=True), TypeError, "prefill must be a str"),
    ("Engine prefill name", lambda e, g, m: _new(m, prefill="lazy"), ValueError, "unknown prefill mode 'lazy'"),
    ("Engine chunk big", lambda e, g, m: _new(m, chunk=10**6), ValueError, r"chunk must be in \[1, 8192\]"),
    ("Engine positions type", lambda e, g, m: _new(m, positions=1), TypeError, "positions must be a str"),
    ("Engine positions name", lambda e, g, m: _new(m, positions="rel"), ValueError, "positions"),
    ("Engine float_activations", lambda e, g, m: _new(m, float_activations="no"), TypeError,
     "float_activations must be True or False, got str"),
    ("Engine n_threads 0", lambda e, g, m: _new(m, n_threads=0), ValueError, "n_threads must be >= 1"),
    ("Engine n_threads big", lambda e, g, m: _new(m, n_threads=10**6), ValueError, r"n_threads must be at most 512, got 1000000$"),
    ("Engine seed type", lambda e, g, m: _new(m, seed="7"), TypeError, "seed must be an int, got str"),
    ("Engine seed range", lambda e, g, m: _new(m, seed=2**70), ValueError, "seed must be <="),
    ("Engine n_seq 0", lambda e, g, m: _new(m, n_seq=0), ValueError, "n_seq must be >= 1"),
    ("Engine n_seq big", lambda e, g, m: _new(m, n_seq=10**6), ValueError, "n_seq must be in"),
    ("Engine n_seq and kv_budget", lambda e, g, m: _new(m, n_seq=2, kv_budget="1MiB"), ValueError, "not both"),
    ("Engine kv_budget type", lambda e, g, m: _new(m, kv_budget=1.5), TypeError, "kv_budget must be bytes"),
    ("Engine kv_budget unit", lambda e, g, m: _new(m, kv_budget="3 parsecs"), ValueError, "kv_budget: unknown size unit"),
    ("Engine kv_budget words", lambda e, g, m: _new(m, kv_budget="lots"), ValueError, "kv_budget: 'lots' is not a size"),
    ("Engine kv_budget huge", lambda e, g, m: _new(m, kv_budget="99999999TiB"), ValueError, "kv_budget: size"),
    ("Engine kv_type_k q3_0", lambda e, g, m: _new(m, kv_type_k="q3_0"), ValueError, "kv_type_k"),
    ("Engine kv_budget 0", lambda e, g, m: _new(m, kv_budget=0), ValueError, "kv_budget must be >= 1"),
    ("Engine kv_budget small", lambda e, g, m: _new(m, kv_budget=1000), ValueError, "kv_budget"),
    ("Engine n_batch 0", lambda e, g, m: _new(m, n_batch=0), ValueError, "n_batch must be >= 1"),
    ("Engine backend type", lambda e, g, m: _new(m, backend=0), TypeError, "backend must be a str"),
    ("Engine backend name", lambda e, g, m: _new(m, backend="tpu"), ValueError, "unknown device 'tpu'"),
    ("Engine device type", lambda e, g, m: _new(m, device=1), TypeError, "device must be a str"),
    ("Engine device name", lambda e, g, m: _new(m, device="tpu"), ValueError, r"unknown device 'tpu' \(known: cpu, cuda\)"),
    ("Engine device and backend", lambda e, g, m: _new(m, device="cpu", backend="cuda"), ValueError, "disagree"),
    # a tova.Policy instance's attributes, and its answers
    ("Policy needs_probs", lambda e, g, m: _new(m, policy=_policy(needs_probs="yes")), TypeError,
     "needs_probs must be True or False, got str"),
    ("Policy every_step", lambda e, g, m: _new(m, policy=_policy(every_step=None)), TypeError,
     "every_step must be True or False"),
    ("Policy name", lambda e, g, m: _new(m, policy=_policy(name=5)), TypeError, "name must be a str"),
    ("Policy select", lambda e, g, m: _new(m, policy=_policy(select=5)), TypeError, "select must be callable"),
    ("Policy answer None", lambda e, g, m: _evicting(m, _policy(select=lambda self, layer, view: None)),
     tova.TovaError, r"select\(\) must return a sequence of slot indices"),
    ("Policy answer floats", lambda e, g, m: _evicting(m, _policy(select=lambda self, layer, view: [0.5])),
     tova.TovaError, r"select\(\) must return slot indices"),
    ("Policy answer bools", lambda e, g, m: _evicting(m, _policy(select=lambda self, layer, view: [True])),
     tova.TovaError, r"select\(\) must return slot indices"),
    ("Policy answer count", lambda e, g, m: _evicting(m, _policy(select=lambda self, layer, view: [])),
     tova.TovaError, "returned 0 slots, expected 1"),
    # tokens
    ("tokenize bytes", lambda e, g, m: e.tokenize(b"hi"), TypeError, "text must be a str, got bytes"),
    ("tokenize surrogate", lambda e, g, m: e.tokenize("a\ud800"), ValueError, "text is not valid Unicode"),
    ("tokenize add_bos", lambda e, g, m: e.tokenize("hi", add_bos="yes"), TypeError, "add_bos must be True or False"),
    ("tokenize special", lambda e, g, m: e.tokenize("hi", special=None), TypeError, "special must be True or False"),
    ("detokenize str", lambda e, g, m: e.detokenize("abc"), TypeError, "ids must be a sequence of token ids"),
    ("detokenize float id", lambda e, g, m: e.detokenize([1.5]), TypeError, r"ids\[0\] must be an int token id, got float"),
    ("detokenize float array", lambda e, g, m: e.detokenize(np.array([1.0])), TypeError, "integer token ids"),
    ("detokenize id range", lambda e, g, m: e.detokenize([2**40]), ValueError, "token id 1099511627776 is out of range"),
    ("detokenize negative id", lambda e, g, m: e.detokenize([-1]), ValueError, "token id -1 is out of range"),
    ("detokenize special", lambda e, g, m: e.detokenize([1], special="x"), TypeError, "special must be True or False"),
    # eval / reset / introspection
    ("eval str", lambda e, g, m: e.eval("hi"), TypeError, "ids must be a sequence of token ids"),
    ("eval float id", lambda e, g, m: e.eval([1.7]), TypeError, r"ids\[0\] must be an int token id"),
    ("eval empty", lambda e, g, m: e.eval([]), ValueError, "at least one token"),
    ("eval id range", lambda e, g, m: e.eval([10**9]), ValueError, "token id 1000000000 is out of range"),
    ("eval all_logits", lambda e, g, m: e.eval([1], all_logits=1), TypeError, "all_logits must be True or False"),
    ("eval seq type", lambda e, g, m: e.eval([1], seq="0"), TypeError, "seq must be an int, got str"),
    ("eval seq range", lambda e, g, m: e.eval([1], seq=2), ValueError, r"sequence 2 is out of range \[0, 2\)"),
    ("reset seq type", lambda e, g, m: e.reset(0.0), TypeError, "seq must be an int, got float"),
    ("reset seq range", lambda e, g, m: e.reset(-1), ValueError, "sequence -1 is out of range"),
    ("n_past_of type", lambda e, g, m: e.n_past_of("a"), TypeError, "seq must be an int"),
    ("n_past_of range", lambda e, g, m: e.n_past_of(2**70), ValueError, "out of range"),
    ("kv_positions layer type", lambda e, g, m: e.kv_positions("0"), TypeError, "layer must be an int"),
    ("kv_positions layer range", lambda e, g, m: e.kv_positions(30), ValueError, r"layer 30 is out of range \[0, 30\)"),
    ("kv_positions seq range", lambda e, g, m: e.kv_positions(0, seq=5), ValueError, "sequence 5 is out of range"),
    # generation
    ("generate prompt None", lambda e, g, m: e.generate(None), TypeError, "prompt must be a str or a sequence of token ids"),
    ("generate prompt int", lambda e, g, m: e.generate(5), TypeError, "prompt must be a str or a sequence of token ids"),
    ("generate prompt bytes", lambda e, g, m: e.generate(b"hi"), TypeError, "prompt must be a str"),
    ("generate prompt empty", lambda e, g, m: e.generate(""), ValueError, "the prompt is empty"),
    ("generate prompt ids", lambda e, g, m: e.generate([1, 10**9]), ValueError, "token id 1000000000 is out of range"),
    ("generate prompt text", lambda e, g, m: e.generate("hi \ud800"), ValueError, "prompt is not valid Unicode"),
    ("generate prompt surrogate", lambda e, g, m: e.generate("\udfff"), ValueError, "not valid Unicode"),
    ("generate max_tokens str", lambda e, g, m: e.generate("Hi", max_tokens="5"), TypeError, "max_tokens must be an int"),
    ("generate max_tokens -1", lambda e, g, m: e.generate("Hi", max_tokens=-1), ValueError, "max_tokens must be >= 0"),
    ("generate max_tokens 2^40", lambda e, g, m: e.generate("Hi", max_tokens=2**40), ValueError, "max_tokens must be <="),
    ("generate stop int", lambda e, g, m: e.generate("Hi", stop=5), TypeError, "stop must be a str or a list of str"),
    ("generate stop [int]", lambda e, g, m: e.generate("Hi", stop=["a", 5]), TypeError, r"stop\[1\] must be a str"),
    ("generate stop empty", lambda e, g, m: e.generate("Hi", stop=[""]), ValueError, "stop strings must not be empty"),
    ("generate ignore_eos", lambda e, g, m: e.generate("Hi", ignore_eos="x"), TypeError, "ignore_eos must be True or False"),
    ("generate sampling dict", lambda e, g, m: e.generate("Hi", sampling={"temperature": 0}), TypeError,
     "sampling must be a tova.SamplingParams"),
    ("generate unknown field", lambda e, g, m: e.generate("Hi", temprature=0), TypeError, "unknown generate\\(\\) keyword argument\\(s\\) temprature; did you mean temperature\\?"),
    ("generate temp", lambda e, g, m: e.generate("Hi", temp=0), TypeError, "temp; did you mean temperature\\?"),
    # A keyword another generation method takes is named with that method.
    ("generate logprobs", lambda e, g, m: e.generate("Hi", logprobs=2), TypeError,
     r"unknown generate\(\) keyword argument\(s\) logprobs; valid names: .*; logprobs is an argument of submit\(\), not of generate\(\)$"),
    ("stream reuse_prefix", lambda e, g, m: e.stream("Hi", reuse_prefix=True), TypeError,
     r"reuse_prefix is an argument of submit\(\), not of stream\(\)"),
    ("chat logprobs", lambda e, g, m: e.chat([{"role": "user", "content": "Hi"}], logprobs=2), TypeError,
     r"unknown chat\(\) keyword argument\(s\) logprobs; valid names: chat_template, .*; logprobs is an argument of submit\(\), not of chat\(\)"),
    ("generate keep_system", lambda e, g, m: e.generate("Hi", keep_system=True), TypeError,
     r"keep_system is an argument of chat\(\), chat_stream\(\), create_chat_completion\(\), not of generate\(\)"),
    ("SamplingParams temp", lambda e, g, m: tova.SamplingParams(temp=0.5), TypeError,
     r"unknown sampling parameter\(s\) temp; did you mean temperature\?; valid names: "),
    ("generate temperature str", lambda e, g, m: e.generate("Hi", temperature="hot"), TypeError, "temperature"),
    ("generate temperature nan", lambda e, g, m: e.generate("Hi", temperature=float("nan")), ValueError, "temperature"),
    ("stream max_tokens", lambda e, g, m: e.stream("Hi", max_tokens=1.0), TypeError, "max_tokens must be an int"),
    ("submit logprobs type", lambda e, g, m: e.submit("Hi", logprobs="5"), TypeError, "logprobs must be an int"),
    ("submit logprobs range", lambda e, g, m: e.submit("Hi", logprobs=21), ValueError, r"logprobs must be in \[0, 20\]"),
    ("submit reuse_prefix", lambda e, g, m: e.submit("Hi", reuse_prefix=1), TypeError, "reuse_prefix must be True or False"),
    ("generate_batch str", lambda e, g, m: e.generate_batch("Hi"), TypeError, "prompts must be a list of prompts, got str"),
    ("generate_batch int", lambda e, g, m: e.generate_batch(3), TypeError, "prompts must be a list of prompts, got int"),
    ("generate_batch [int]", lambda e, g, m: e.generate_batch(["Hi", 3]), TypeError, "prompt must be a str or a sequence"),
    ("generate_batch max_tokens", lambda e, g, m: e.generate_batch(["Hi"], max_tokens=-5), ValueError, "max_tokens"),
    # chat
    ("chat str", lambda e, g, m: e.chat("Hi"), TypeError, "messages must be a list"),
    ("chat None", lambda e, g, m: e.create_chat_completion(None), TypeError, "messages must be a list"),
    ("chat [int]", lambda e, g, m: e.chat([5]), TypeError, r"messages\[0\] must be a dict"),
    ("chat empty", lambda e, g, m: e.chat([]), ValueError, "messages is empty"),
    ("chat no role", lambda e, g, m: e.chat([{"content": "x"}]), ValueError, r"messages\[0\] needs a 'role'"),
    ("chat no content", lambda e, g, m: e.chat([{"role": "user"}]), ValueError, r"messages\[0\] needs a 'content'"),
    ("chat content type", lambda e, g, m: e.chat([{"role": "user", "content": 5}]), TypeError,
     r"messages\[0\]\['content'\] must be a str, got int"),
    ("chat content surrogate", lambda e, g, m: e.chat([{"role": "user", "content": "\ud800"}]), ValueError,
     "not valid Unicode"),
    ("chat template type", lambda e, g, m: e.chat(MSG, chat_template=5), TypeError, "chat_template must be a str"),
    ("chat template empty", lambda e, g, m: e.chat(MSG, chat_template=""), ValueError, "chat_template is empty"),
    ("chat template error", lambda e, g, m: e.chat(MSG, chat_template="{{ x.y.z }}"), ValueError, "chat template:"),
    ("chat keep_system", lambda e, g, m: e.chat(MSG, keep_system="x"), TypeError, "keep_system must be True or False"),
    ("chat max_tokens", lambda e, g, m: e.chat_stream(MSG, max_tokens=-1), ValueError, "max_tokens must be >= 0"),
    ("chat stop", lambda e, g, m: e.chat(MSG, stop=[None]), TypeError, r"stop\[0\] must be a str"),
    # perplexity (method and module function)
    ("perplexity text type", lambda e, g, m: e.perplexity(5), TypeError, "text_or_tokens must be a str or a sequence"),
    ("perplexity short", lambda e, g, m: e.perplexity(""), ValueError, "at least 2 are needed"),
    ("perplexity ids", lambda e, g, m: e.perplexity([1.5, 2]), TypeError, r"text_or_tokens\[0\] must be an int"),
    ("perplexity id range", lambda e, g, m: tppl.perplexity(m, [1, 2, -1]), ValueError,
     r"text_or_tokens\[2\]: token id -1 is out of range \(must be >= 0\)"),
    ("perplexity id vocab", lambda e, g, m: tppl.perplexity(m, [1, 2, 10**6]), ValueError,
     r"text_or_tokens\[2\]: token id 1000000 is out of range \[0, 49152\)"),
    ("perplexity policy", lambda e, g, m: e.perplexity("a b c", policy=5), TypeError, "policy must be a policy name"),
    ("perplexity kv_size", lambda e, g, m: e.perplexity("a b c", kv_size=0), ValueError, "kv_size must be >= 1"),
    ("perplexity prefill", lambda e, g, m: e.perplexity("a b c", prefill="lazy"), ValueError, "prefill must be"),
    ("perplexity context", lambda e, g, m: e.perplexity("a b c", context=1), ValueError, "context must be >= 2"),
    ("perplexity context type", lambda e, g, m: e.perplexity("a b c", context=2.0), TypeError, "context must be an int"),
    ("perplexity stride", lambda e, g, m: e.perplexity("a b c", stride=2), ValueError, "stride needs context"),
    ("perplexity chunks", lambda e, g, m: e.perplexity("a b c d " * 20, context=8, chunks=0), ValueError, "chunks must be >= 1"),
    ("perplexity add_bos", lambda e, g, m: e.perplexity("a b c", add_bos="y"), TypeError, "add_bos must be True or False"),
    ("perplexity progress", lambda e, g, m: e.perplexity("a b c", progress=None), TypeError, "progress must be True or False"),
    ("perplexity option", lambda e, g, m: e.perplexity("a b c", kv_sise=8), TypeError, "kv_sise"),
    ("perplexity model type", lambda e, g, m: tppl.perplexity(5, "a b c"), TypeError, "engine_or_model must be a path"),
    ("nll_stats empty", lambda e, g, m: tppl.nll_stats([]), ValueError, "nlls is empty: no tokens were scored"),
    ("nll_stats None", lambda e, g, m: tppl.nll_stats(None), TypeError, "nlls must be a sequence of numbers"),
    # Handle
    ("Handle.next timeout type", lambda e, g, m: e.submit("Hi", max_tokens=1).next(timeout="1"), TypeError,
     "timeout must be a number"),
    ("Handle.next timeout -1", lambda e, g, m: e.submit("Hi", max_tokens=1).next(timeout=-1), ValueError,
     "timeout must be >= 0"),
    ("Handle.next timeout nan", lambda e, g, m: e.submit("Hi", max_tokens=1).next(timeout=float("nan")), ValueError,
     "timeout must be a finite number"),
    ("Handle.logprobs start", lambda e, g, m: e.submit("Hi", max_tokens=1).logprobs(start=-1), ValueError,
     "start must be >= 0"),
    ("Handle.logprobs start type", lambda e, g, m: e.submit("Hi", max_tokens=1).logprobs(start="0"), TypeError,
     "start must be an int"),
    # SamplingParams
    ("SamplingParams top_k float", lambda e, g, m: tova.SamplingParams(top_k=4.0), TypeError, "top_k"),
    ("SamplingParams top_p 0", lambda e, g, m: tova.SamplingParams(top_p=0.0), ValueError, "top_p"),
    ("SamplingParams min_p 2", lambda e, g, m: tova.SamplingParams(min_p=2), ValueError, "min_p"),
    ("SamplingParams replace", lambda e, g, m: tova.SamplingParams().replace(nope=1), TypeError, "unknown sampling parameter"),
    ("SamplingParams greedy", lambda e, g, m: tova.SamplingParams.greedy(seed="1"), TypeError, "seed"),
    # GGUFFile
    ("GGUFFile path type", lambda e, g, m: tova.GGUFFile(5), TypeError, "path must be a path"),
    ("GGUFFile missing", lambda e, g, m: tova.GGUFFile("/no/such/file.gguf"), FileNotFoundError, "no such file"),
    ("GGUFFile tensor type", lambda e, g, m: g.tensor(5), TypeError, "name must be a str, got int"),
    ("GGUFFile raw type", lambda e, g, m: g.raw(None), TypeError, "name must be a str"),
    ("GGUFFile tensor missing", lambda e, g, m: g.tensor("nope"), KeyError, "no tensor named 'nope'"),
    # models
    ("resolve type", lambda e, g, m: tmodels.resolve(5), TypeError, "model must be a path"),
    ("resolve unknown", lambda e, g, m: tmodels.resolve("no-such-model", download=False), FileNotFoundError,
     "known models"),
    ("resolve download", lambda e, g, m: tmodels.resolve(m, download="no"), TypeError, "download must be True or False"),
    ("pull unknown", lambda e, g, m: tmodels.pull("no-such-model"), FileNotFoundError, "not a known model name"),
    # chat module
    ("render_template type", lambda e, g, m: tchat.render_template(5, MSG), TypeError, "template must be a str"),
    ("render_template flag", lambda e, g, m: tchat.render_template("x", MSG, add_generation_prompt=None), TypeError,
     "add_generation_prompt must be True or False"),
    ("render_template bos", lambda e, g, m: tchat.render_template("x", MSG, bos_token=1), TypeError,
     "bos_token must be a str"),
    ("render_template messages", lambda e, g, m: tchat.render_template("x", "Hi"), TypeError, "messages must be a list"),
    ("chat_template_for engine", lambda e, g, m: tchat.chat_template_for("engine"), TypeError, "engine must be a tova.Engine"),
    ("render_prompt engine", lambda e, g, m: tchat.render_prompt(None, MSG), TypeError, "engine must be a tova.Engine"),
]


@pytest.mark.parametrize("label, call, exc, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_argument_is_a_clear_error(e, gguf, smollm2_path, label, call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(e, gguf, str(smollm2_path))
    # The engine stays usable after any refused call.
    assert e.generate("Hi", max_tokens=1, temperature=0) is not None


def test_server_arguments(e):
    pytest.importorskip("fastapi", reason="the [server] extra is not installed")
    from tova.server import ServeConfig, create_app

    with pytest.raises(TypeError, match="engine must be a tova.Engine"):
        create_app("engine")
    with pytest.raises(TypeError, match="config must be a tova.server.ServeConfig"):
        create_app(e, {"model_id": "x"})
    for kw, exc, pattern in [
        (dict(model_id=5), TypeError, "model_id must be a str"),
        (dict(model_id=""), ValueError, "model_id is empty"),
        (dict(model_id="m", max_queue=-1), ValueError, "max_queue must be >= 0"),
        (dict(model_id="m", max_prompt_tokens=1.5), TypeError, "max_prompt_tokens must be an int"),
        (dict(model_id="m", api_key=""), ValueError, "api_key is empty"),
        (dict(model_id="m", max_tokens_cap=0), ValueError, "max_tokens_cap must be >= 1"),
        (dict(model_id="m", default_max_tokens=10, max_tokens_cap=5), ValueError,
         r"default_max_tokens must be in \[1, 5\]"),
    ]:
        with pytest.raises(exc, match=pattern):
            ServeConfig(**kw)


def test_accepted_forms(e):
    """What the table accepts works: numpy ints and arrays, PathLike paths, None defaults."""
    ids = e.tokenize("Hello there")
    assert e.detokenize(np.array(ids, dtype=np.int32)) == e.detokenize(ids)
    assert e.kv_positions(np.int64(0), seq=np.int32(1)).dtype.kind == "i"
    assert e.generate(np.array(ids), max_tokens=np.int64(2), temperature=0) == \
        e.generate(ids, max_tokens=2, temperature=0)
    assert e.generate("Hi", max_tokens=2, stop="\n\n", temperature=0) is not None
    assert e.submit("Hi", max_tokens=1, temperature=0).next(timeout=5) is not None
    assert tmodels.resolve(Path(e.path)) == Path(e.path)


# ---- the table covers every public function ------------------------------------------------------


def _documented_names() -> set:
    return set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)", DOC.read_text(encoding="utf-8")))


def _public_functions():
    """(owner, name, parameter names) of every public function and method of the package."""
    from tova.server import ServeConfig

    out = []

    def add(owner, fn, name):
        params = [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]
        out.append((owner, name, params))

    for cls in (tova.Engine, tova.Handle, tova.GGUFFile, tova.SamplingParams):
        for name, member in vars(cls).items():
            if name.startswith("_") and name != "__init__":
                continue
            if cls is tova.Handle and name == "__init__":
                continue  # handles are made by Engine.submit, not by users
            fn = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
            if inspect.isfunction(fn):
                add(cls.__name__, fn, cls.__name__ if name == "__init__" else name)
    for mod in (tmodels, tppl, tchat):
        for name in mod.__all__:
            if inspect.isfunction(getattr(mod, name)):
                add(mod.__name__, getattr(mod, name), name)
    from tova.server.app import create_app

    add("tova.server", create_app, "create_app")
    out.append(("tova.server", "ServeConfig", [f.name for f in dataclasses.fields(ServeConfig)]))
    out.append(("tova", "SamplingParams fields", [f.name for f in dataclasses.fields(tova.SamplingParams)]))
    return out


def test_every_public_function_and_argument_is_in_the_table():
    pytest.importorskip("fastapi", reason="the [server] extra is not installed")
    documented = _documented_names()
    missing = []
    for owner, name, params in _public_functions():
        if name not in documented and name != "SamplingParams fields":
            missing.append(f"{owner}.{name}")
        for p in params:
            if p not in documented and p not in ("fields", "engine_options", "kwargs"):
                missing.append(f"{owner}.{name}({p})")
    assert not missing, "not in docs/python-arguments.md: " + ", ".join(missing)
