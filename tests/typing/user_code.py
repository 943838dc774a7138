"""Correct uses of the public API, as a user writes them: ``mypy --strict`` must accept every
line (tests/test_typing.py). Never run; only type-checked."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import List, Optional, Sequence, TypedDict

import numpy as np
import numpy.typing as npt

import tova
from tova import Engine, Handle, PluginPolicy, Policy, PolicyView, SamplingParams


class LowestMean(Policy):
    """A policy written the natural way: numpy in, a numpy array of slots out."""

    name = "lowest-mean"

    def select(self, layer: int, view: PolicyView) -> npt.NDArray[np.intp]:
        scores = np.where(view.protect == 1, np.inf, view.probs_mean)
        scores = np.where(view.pos < 0, -np.inf, scores)
        return np.argsort(scores)[: view.n_evict]

    def on_evict(self, layer: int, slots: Sequence[int], view: PolicyView) -> None:
        view.state[list(slots)] = 0.0


class ListPolicy(Policy):
    def select(self, layer: int, view: PolicyView) -> List[int]:
        return [int(i) for i in np.flatnonzero(view.pos >= 0)[: view.n_evict]]


class ChatMessage(TypedDict):  # how OpenAI's client library types its messages
    role: str
    content: str


def generation(eng: Engine) -> None:
    text: str = eng.generate("The capital of France is", max_tokens=8, temperature=0)
    for piece in eng.stream("Once upon a time", max_tokens=8, stop=["\n"], top_k=20, seed=3):
        print(piece, end="")
    sp = SamplingParams(temperature=0.7, top_p=0.9, seed=1)
    sp2: SamplingParams = sp.replace(top_k=10, min_p=0.1)
    greedy: SamplingParams = SamplingParams.greedy(seed=3)
    outs: List[str] = eng.generate_batch(["a", "b"], max_tokens=4, sampling=sp2)
    h: Handle = eng.submit("Hello", max_tokens=4, logprobs=2, sampling=greedy)
    nxt: Optional[str] = h.next(timeout=1.0)
    rest: str = h.result()
    print(text, outs, nxt, rest, h.finished, h.finish_reason, h.tokens, h.logprobs())
    ids = np.asarray(eng.tokenize("hello world"), dtype=np.int32)
    print(eng.generate(ids, max_tokens=2), eng.detokenize(ids), eng.eval(ids).shape)


def chatting(eng: Engine) -> None:
    plain = [{"role": "user", "content": "Hi"}]
    typed: List[ChatMessage] = [{"role": "user", "content": "Hi"}]
    reply: str = eng.chat(plain, max_tokens=8, temperature=0)
    for p in eng.chat_stream(typed, max_tokens=4):
        print(p)
    cc = eng.create_chat_completion(typed, max_tokens=4)
    prompt: str = tova.chat.render_prompt(eng, typed)
    print(reply, cc["choices"][0]["message"]["content"], prompt)
    eng.reset_chat()


def measuring(eng: Engine) -> None:
    r = tova.perplexity.perplexity(eng, "The quick brown fox.", progress=False)
    r2 = eng.perplexity("The quick brown fox.", context=8, progress=False)
    ppl: float = r.ppl + r2.ppl
    print(ppl, eng.last_stats, eng.stats, eng.model_info, eng.n_past, eng.kv_bytes)


async def streaming(eng: Engine) -> str:
    return "".join([piece async for piece in eng.submit("Hello", max_tokens=4)])


def everything() -> None:
    path: Path = tova.models.resolve("smollm2-135m-instruct")
    print(tova.models.cache_dir(), [m["name"] for m in tova.models.list_models()])
    with Engine(path, n_threads=1, kv_size=128, policy="tova", seed=0) as eng:
        generation(eng)
        chatting(eng)
        measuring(eng)
        print(asyncio.run(streaming(eng)))
    with Engine(path, policy=LowestMean(), kv_size=32) as e2, Engine(path, policy=ListPolicy()) as e3:
        print(e2.generate("Hi", max_tokens=2), e3.generate("Hi", max_tokens=2))
    plugin = PluginPolicy("./libmine.so", "k=1")
    print(plugin.path, tova.get_include(), tova.cuda_built(), tova.cuda_device_count(), tova.__version__)
    gf = tova.GGUFFile(path)
    info: tova.TensorInfo = next(iter(gf.tensors.values()))
    print(gf.metadata["general.architecture"], info.shape, gf.tensor(info.name).dtype, gf.path.upper())
    try:
        Engine("nope.gguf")
    except (tova.GGUFError, tova.TovaError, FileNotFoundError) as e:
        print(e)
