"""Chat with the other families (issue "More model families"): Qwen 2.5 through the ChatML
template in its file, Gemma 3 through its turn format (the file has no template), both from
Python (engine.chat) and from the terminal program (tova chat, piped)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import tova
from tova._cli import binary

pytestmark = pytest.mark.model


def test_qwen_chat_answers(qwen05_path):
    with tova.Engine(qwen05_path, kv_size=256, n_threads=2) as e:
        msgs = [{"role": "user", "content": "What is 2+2? Answer with one number."}]
        reply = e.chat(msgs, max_tokens=16, temperature=0)
        assert "4" in reply, reply
        assert e.last_stats["finish_reason"] == "stop"  # ended at <|im_end|>
        msgs += [{"role": "assistant", "content": reply},
                 {"role": "user", "content": "Write a Python function that returns its argument doubled."}]
        reply2 = e.chat(msgs, max_tokens=60, temperature=0)
        assert "def " in reply2, reply2


def test_gemma_chat_uses_turns(gemma3_path):
    """The base model has no chat training: check the turn format is what it reads and that a
    reply comes back and ends at <end_of_turn> or at max_tokens."""
    with tova.Engine(gemma3_path, kv_size=256, n_threads=2) as e:
        out = e.create_chat_completion([{"role": "user", "content": "Hello!"}], max_tokens=12,
                                       temperature=0)
        assert out["choices"][0]["finish_reason"] in ("stop", "length")
        assert out["usage"]["prompt_tokens"] == len(
            e.tokenize("<bos><start_of_turn>user\nHello!<end_of_turn>\n<start_of_turn>model\n",
                       add_bos=False, special=True))


@pytest.mark.parametrize("fixture", ["qwen05_path", "gemma3_path"])
def test_tova_chat_piped(fixture, request):
    path = request.getfixturevalue(fixture)
    env = dict(os.environ, TOVA_PYTHON=sys.executable)
    r = subprocess.run([str(binary()), "chat", "-m", str(path), "--temp", "0", "-n", "12", "-t", "2"],
                       input="Hi\nWhat is 2+2?\n", capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert len([l for l in r.stdout.splitlines() if l.strip()]) >= 2, r.stdout
