"""Hostile model content: each a clear error when the file is opened (naming the file and the key
or tensor at fault), never a crash, a hang or an out-of-memory kill later. Synthetic models from
tests/reference/synthetic.py with one field made hostile each."""
from __future__ import annotations

import re
import time

import gguf
import numpy as np
import pytest
from gguf import GGUFValueType as VT

import tova
from reference.synthetic import write_gemma3_gguf, write_llama_gguf
from tova.chat import MAX_LOOP_ITEMS, render_template


def _load_error(path, pattern):
    with pytest.raises(tova.GGUFError, match=pattern) as ei:
        tova.Engine(path, n_threads=1)
    assert str(path) in str(ei.value)


@pytest.mark.parametrize("kv, pattern", [
    ({"llama.attention.head_count": 5}, "head_count 5 is not a multiple of head_count_kv 2"),
    ({"llama.attention.head_count_kv": 3}, "head_count 4 is not a multiple of head_count_kv 3"),
    ({"llama.attention.head_count": 0}, "llama.attention.head_count must be positive, found 0"),
    ({"llama.block_count": 0}, "llama.block_count must be positive"),
    ({"llama.embedding_length": 0}, "llama.embedding_length must be positive"),
    ({"llama.context_length": (2 ** 40, VT.UINT64)}, r"llama.context_length = 1099511627776 is larger than"),
    ({"llama.context_length": (-5, VT.INT32)}, "llama.context_length must be positive, found -5"),
    ({"llama.block_count": (2 ** 32 + 2, VT.UINT64)}, r"llama.block_count = 4294967298 is larger than"),
    ({"llama.feed_forward_length": 2 ** 31 - 1}, r"feed_forward_length = 2147483647 is larger than"),
    ({"llama.vocab_size": (2 ** 40, VT.UINT64)}, r"vocab_size = 1099511627776 is larger than"),
    ({"llama.rope.dimension_count": 7}, "rope.dimension_count 7 must be even"),
    ({"llama.attention.key_length": 1 << 20}, r"key_length = 1048576 is larger than"),
    ({"llama.rope.freq_base": float("nan")}, r"llama.rope.freq_base = nan is not in"),
    ({"llama.rope.freq_base": -1.0}, r"llama.rope.freq_base = -1 is not in"),
    ({"llama.attention.layer_norm_rms_epsilon": float("inf")}, r"layer_norm_rms_epsilon = inf is not in"),
])
def test_absurd_hyperparameters(tmp_path, kv, pattern):
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, extra_kv=kv)
    _load_error(path, pattern)


@pytest.mark.parametrize("window, pattern", [
    (2 ** 31, r"gemma3.attention.sliding_window = 2147483648 is larger than 512"),
    (-1, r"sliding_window = -1 is below its minimum 0"),
])
def test_absurd_sliding_window(tmp_path, window, pattern):
    path = tmp_path / "g.gguf"
    write_gemma3_gguf(path, extra_kv={"gemma3.attention.sliding_window": (window, VT.INT64)})
    _load_error(path, pattern)


@pytest.mark.parametrize("key", ["bos_token_id", "eos_token_id", "unknown_token_id"])
def test_special_token_out_of_range(tmp_path, key):
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, extra_kv={f"tokenizer.ggml.{key}": 10 ** 6})
    _load_error(path, f"tokenizer.ggml.{key} = 1000000 is outside the vocabulary of 384 tokens")


def test_merges_naming_unknown_tokens(tmp_path):
    """A merge whose parts or result are not tokens is a load error naming the merge and the
    unknown symbol (as Hugging Face's BPE refuses it), as is a merge that is not two symbols."""
    path = tmp_path / "m.gguf"
    model = write_llama_gguf(path)
    with tova.Engine(path, n_threads=1) as e:  # the file as written loads and round-trips
        text = "the cat sat on the mat"
        assert e.detokenize(e.tokenize(text)) == text
    merges = list(model.merges)
    left, right = merges[0].split(" ")
    for bad, unknown in ((f"zzz {right}", "zzz"), (f"{left} qqq", "qqq")):
        write_llama_gguf(path, extra_kv={"tokenizer.ggml.merges": merges[:3] + [bad] + merges[3:]})
        _load_error(path, rf"tokenizer.ggml.merges\[3\] = '{re.escape(bad)}' names '{unknown}', which is not "
                    "in the vocabulary")
    tokens = set(model.tokens)
    pair = next((a, b) for a in sorted(tokens) for b in sorted(tokens)
                if a and b and " " not in a + b and a + b not in tokens)
    write_llama_gguf(path, extra_kv={"tokenizer.ggml.merges": [f"{pair[0]} {pair[1]}"] + merges})
    _load_error(path, rf"names '{re.escape(pair[0] + pair[1])}', which is not in the vocabulary")
    write_llama_gguf(path, extra_kv={"tokenizer.ggml.merges": ["ab"] + list(model.merges)})
    _load_error(path, r"tokenizer.ggml.merges\[0\] = 'ab' is not two symbols separated by a space")


def test_alignment_one_puts_blocks_at_odd_addresses(tmp_path):
    """general.alignment = 1 packs tensors byte to byte: a tensor whose data is not at its
    block's natural alignment is refused when the file is opened (kernels read blocks through
    structs; an unaligned one is undefined behaviour)."""
    path = tmp_path / "a.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_custom_alignment(1)
    w.add_tensor("a", np.zeros(3, np.int8))
    w.add_tensor("b", np.zeros((2, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(tova.GGUFError, match=r"tensor 'b' data at file offset \d+ is not aligned to the 4 "
                                             r"bytes its type F32 needs \(general.alignment = 1\)"):
        tova.GGUFFile(path)


def test_tensor_of_the_wrong_shape(tmp_path):
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, extra_kv={"llama.feed_forward_length": 96})  # tensors are 128 wide
    _load_error(path, r"tensor 'blk.0.ffn_gate.weight' has shape \[64, 128\], expected \[64, 96\]")


# --- chat templates from the file: bounded -------------------------------------------------------

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("template, pattern", [
    ("x" * (2 << 20), "more than the 1048576 tova renders"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "range"),
    ("{{ 'x' * 1000000000 }}", r"'\*' would make"),
    ("{% for i in range(90000) %}{{ 'y' * 100000 }}{% endfor %}", "range|rendered text exceeds"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursion too deep"),
    # loops over lists (not range), and what a template makes one operation at a time
    ("{% set l = [0] * 100000 %}{% for a in l %}{% for b in l %}{% endfor %}{% endfor %}x", "loops"),
    ("{% for a in [1, 1] recursive %}{{ loop([1, 1]) }}{% endfor %}", "loops|recursion"),
    ("{{ lipsum(n=2000000, html=False) | length }}", "lipsum"),
    ("{% set ns = namespace(s='a') %}{% for i in range(29) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
     "made a value of"),
    ("{% set ns = namespace(s='a') %}{% for i in range(29) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
     "made a value of"),
    ("{{ ('x' | center(2000000000)) | length }}", "center filter pads"),
    ("{{ 'x'.ljust(2000000000) | length }}", "ljust pads"),
    ("{{ '%2000000000s' % 'x' }}", "format pads"),
    ("{{ '%2000000000s' | format('x') }}", "format pads"),
    ("{{ '{:>2000000000}'.format('x') }}", "format pads"),
    ("{{ 'x' | indent(2000000000, true) }}", "indent filter pads"),
    # integers without end, lists by the billion, widths and indents from arguments
    ("{{ (3 ** 99999999) > 5 }}", r"'\*\*' would make an integer"),
    ("{% set n = namespace(v=3) %}{% for i in range(40) %}{% set n.v = n.v * n.v %}{% endfor %}{{ n.v > 1 }}",
     r"'\*' would make an integer"),
    ("{{ range(10) | slice(1000000000) | list | length }}", "loops"),
    ("{{ range(10) | batch(1) | list | length }}{{ [1] | batch(1000000000) | list }}", "loops"),
    ("{{ '%*s' % (2147483647, 'a') }}", "width from an argument"),
    ("{{ messages | tojson(indent=100000000) }}", "tojson indent"),
    # a tuple nested deeply enough crashes Python when hashed (no recursion check in C): what a
    # namespace keeps is nested at most 32 deep, and holds at most its share of characters
    ("{% set ns = namespace(t=()) %}{% for i in range(200000) %}{% set ns.t = (ns.t,) %}{% endfor %}"
     "{{ {ns.t: 1} | length }}", "nested more than 32 deep"),
    ("{% set big = 'x' * 8000000 %}{% set ns = namespace(l=[]) %}{% for i in range(200) %}"
     "{% set ns.l = ns.l + [big ~ i] %}{% endfor %}", "namespace value would be more than"),
    ("{% set big = 'x' * 8000000 %}{% set ns = namespace() %}{% set ns.a = big ~ 1 %}{% set ns.b = big ~ 2 %}"
     "{% set ns.c = big ~ 3 %}{% set ns.d = big ~ 4 %}{% set ns.e = big ~ 5 %}", "namespace values would hold"),
    # text made of many copies of one long string, refused before it is made
    ("{{ ('{0}' * 200).format('x' * 8000000) | length }}", "format with 200 places"),
    ("{{ (('%(a)s' * 200) % {'a': 'x' * 8000000}) | length }}", "format with 200 places"),
    ("{{ ('{0:>8000000}' * 200).format('') | length }}", "format pads"),
    ("{{ '{0:>{1}}'.format('', 1600000000) | length }}", "format pads"),
    ("{{ ('a\n' * 200) | indent('x' * 8000000) | length }}", "indent filter would make"),
    ("{% set big = 'x' * 8000000 %}{{ ([big] * 200) | join | length }}", "joined text"),
    ("{% set big = 'x' * 8000000 %}{{ ''.join([big] * 200) | length }}", "joined text"),
    ("{% set big = 'x' * 8000000 %}{{ big.replace('x', 'x' * 200) | length }}", "replace would make"),
    ("{% set big = 'x' * 8000000 %}{{ ([big] * 200) | tojson | length }}", "tojson's text"),
    ("{% set big = 'x' * 8000000 %}{{ ([big] * 200) | string | length }}", "string filter's text"),
    ("{% set big = 'x' * 8000000 %}{{ [big] * 200 }}", "printed value"),
    ("{% set big = 'x' * 8000000 %}{{ 'a' ~ [big] * 200 }}", "printed value"),
    ("{{ strftime_now('%1000000000Y') }}", "strftime_now pads"),
    # time: each operation on a 2M-item value takes a fraction of a second (short steps, so the
    # 20 s bound below holds on a loaded machine too); the rendering stops at 5 s
    ("{% set l = ('x' * 2000000) | list %}{% for i in range(1000) %}{% if l | sort | first %}{% endif %}"
     "{% endfor %}ok", "rendering took more than 5 s"),
    # the template's own failures at run time are ValueErrors too
    ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ("{{ 'abc' | truncate(-1) }}", "AssertionError"),
    ("{% include 'other' %}", "no loader"),
])
def test_hostile_chat_templates_fail_fast(template, pattern):
    t = time.time()
    with pytest.raises(ValueError, match=pattern):
        render_template(template, MESSAGES)
    assert time.time() - t < 20  # a clear error, not a hang (most take milliseconds)


def test_template_limits_leave_real_templates_alone():
    ok = "{% for m in messages %}{% for i in range(3) %}{{ m['content'] }}{% endfor %}{% endfor %}"
    assert render_template(ok, MESSAGES * 10) == "hi" * 30
    # namespaces as real templates use them: flags, indexes, a text growing turn by turn
    kept = ("{% set ns = namespace(n=0, seen=false, text='') %}{% for m in messages %}"
            "{% set ns.n = ns.n + 1 %}{% set ns.seen = true %}{% set ns.text = ns.text ~ m['content'] %}"
            "{% endfor %}{{ ns.n }} {{ ns.text | length }} {{ '%s-%s' % (ns.n, 'x') }} {{ '{0}'.format(ns.n) }}")
    assert render_template(kept, [{"role": "user", "content": "y" * 1000}] * 2000) == "2000 2000000 2000-x 2000"
    # the loop budget is per render, not per process: 4 x (90000 + 90000) items per render (each
    # range() and its loop), five renders
    loops = "{% for i in range(90000) %}{% endfor %}" * 4
    assert 4 * 2 * 90000 < MAX_LOOP_ITEMS < 5 * 4 * 2 * 90000
    for _ in range(5):
        assert render_template(loops + "ok", MESSAGES) == "ok"


def test_huge_template_in_the_file_loads_and_chat_says_why(tmp_path):
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, extra_kv={"tokenizer.chat_template": "x" * (4 << 20)})
    with tova.Engine(path, n_threads=1) as e:
        with pytest.raises(ValueError, match="chat template"):
            e.chat(MESSAGES, max_tokens=2)


@pytest.mark.model
def test_model_text_that_is_not_utf8_loads(tmp_path):
    """A name or chat template with bytes that are not UTF-8 loads (as U+FFFD), in Python as in
    the CLI; the engine chats with that template."""
    path = tmp_path / "bad-utf8.gguf"
    template = (b"{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}\xff<|im_end|>\n"
                b"{% endfor %}<|im_start|>assistant\n")
    write_llama_gguf(path, extra_kv={"tokenizer.chat_template": (template, VT.STRING)})
    data = path.read_bytes()
    path.write_bytes(data.replace(b"synthetic-llama", b"\xfe\xffnthetic-llama", 1))  # the name
    with tova.Engine(path, n_threads=1) as e:
        info = e._e.model_info()
        assert info["name"].startswith("\ufffd\ufffdnthetic-llama")
        assert "\ufffd<|im_end|>" in info["chat_template"]
        e.chat([{"role": "user", "content": "hi"}], max_tokens=2)



def test_jinja2_whose_sandbox_leaks_is_refused(monkeypatch):
    """jinja2 before 3.1.6 lets a template escape its sandbox (CVE-2025-27516: '|attr("format")'
    reads the process's environment): refused, saying how to upgrade."""
    import jinja2

    from tova._template_sandbox import jinja2_module

    monkeypatch.setattr(jinja2, "__version__", "3.1.5")
    with pytest.raises(ImportError, match=r"jinja2 >= 3.1.6 .*CVE-2025-27516"):
        jinja2_module()
    monkeypatch.setattr(jinja2, "__version__", "3.1.6")
    assert jinja2_module() is jinja2
