"""Many sequences in one engine: batched decoding equals running alone, threads sharing an
engine, the scheduler's joins and leaves, and the bounds of the settings."""
from __future__ import annotations

import asyncio
import os
import threading

import numpy as np
import pytest

import tova

# Eight prompts of different lengths: short ones, one longer than kv_size 64 (its prefill
# evicts), one longer than several chunks (it joins a running batch over several steps).
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at a temperature of",
    "In 1969, the first humans to walk on the Moon were",
    " ".join(["The old lighthouse keeper climbed the stairs every evening to light the lamp."] * 6)
    + " One night he saw",
    "A recipe for pancakes: first, take",
]

POLICIES = ["tova", "h2o", "sink", "window", "tova_ema"]


def _solo(engine: tova.Engine, prompts, **kw):
    return [engine.generate(p, **kw) for p in prompts]


def _check_batch_equals_solo(path, policy, kv_size=64, max_tokens=48):
    kw = dict(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    # n_seq 3 < 8 prompts: requests queue, join as others leave, and prompts are read in chunks
    # of 16 beside the running decodes.
    with tova.Engine(path, kv_size=kv_size, policy=policy, n_seq=3, chunk=16, n_threads=2) as e:
        solo = _solo(e, PROMPTS, **kw)
        batch = e.generate_batch(PROMPTS, **kw)
        assert e.kv_bytes == 3 * e.kv_bytes_per_seq
        assert len(e.tokenize(PROMPTS[6])) > kv_size  # this prompt's prefill evicts
    for i, (a, b) in enumerate(zip(solo, batch)):
        assert a == b, f"prompt {i} with policy {policy}: batched text differs from the solo run"


@pytest.mark.model
@pytest.mark.parametrize("policy", POLICIES)
def test_batched_greedy_equals_solo_smollm2(smollm2_path, policy):
    _check_batch_equals_solo(smollm2_path, policy)


@pytest.mark.model
@pytest.mark.parametrize("policy", POLICIES)
def test_batched_greedy_equals_solo_gemma3(gemma3_path, policy):
    # (32 tokens into 32 slots: every sequence evicts, each at its own step; a Gemma 3 step costs
    # twice SmolLM2's, its 262k-row output product)
    _check_batch_equals_solo(gemma3_path, policy, kv_size=32, max_tokens=32)


@pytest.mark.model
def test_batched_full_cache_equals_solo(smollm2_path):
    kw = dict(max_tokens=24, temperature=0, ignore_eos=True)
    with tova.Engine(smollm2_path, policy="full", n_ctx=256, n_seq=4, chunk=16, n_threads=2) as e:
        assert e.generate_batch(PROMPTS, **kw) == _solo(e, PROMPTS, **kw)


@pytest.mark.model
def test_sixteen_threads_share_one_engine(smollm2_path):
    requests = [(PROMPTS[i % len(PROMPTS)], 100 + i) for i in range(16)]
    kw = dict(max_tokens=20, temperature=0.8, top_k=40)
    with tova.Engine(smollm2_path, kv_size=64, n_seq=4, n_threads=2) as e:
        expected = [e.generate(p, seed=s, **kw) for p, s in requests]
        got = [None] * len(requests)
        errors = []
        barrier = threading.Barrier(len(requests))

        def worker(i):
            try:
                barrier.wait()
                got[i] = e.generate(requests[i][0], seed=requests[i][1], **kw)
                assert e.last_stats["completion_tokens"] >= 1  # this thread's own statistics
            except BaseException as ex:  # noqa: BLE001 - reported below
                errors.append(ex)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors
        assert got == expected
        assert len(set(expected)) > 8  # different seeds and prompts: different texts


@pytest.mark.model
def test_cancelled_handle_frees_its_sequence(smollm2_path):
    kw = dict(max_tokens=30, temperature=0, ignore_eos=True)
    with tova.Engine(smollm2_path, kv_size=64, n_seq=2, n_threads=2) as e:
        alone = e.generate(PROMPTS[1], **kw)
        a = e.submit(PROMPTS[0], **kw)
        b = e.submit(PROMPTS[1], **kw)
        it = iter(a)
        next(it)
        a.cancel()
        assert a.result() is not None and a.finish_reason == "cancelled"
        assert len(a.tokens) < 30
        # Its sequence is free again: a third request runs beside b at once.
        c = e.submit(PROMPTS[2], **kw)
        assert b.result() == alone
        assert c.result() == e.generate(PROMPTS[2], **kw)


@pytest.mark.model
def test_a_chunk_cancelled_mid_step_leaves_the_others_exact(smollm2_path):
    """Two long prompts read in the same steps (one chunk each): cancelling one mid-step takes
    its rows out at the next layer; the other's answer is still exactly its answer alone, and the
    cancelled one's sequence serves the next request as a fresh one."""
    kw = dict(max_tokens=8, temperature=0, ignore_eos=True)
    settings = dict(kv_size=64, n_seq=2, chunk=1024, n_batch=2048, n_threads=1)
    with tova.Engine(smollm2_path, **settings) as e:
        a_ids = e.tokenize(" ".join(PROMPTS) * 12)[:1500]
        b_ids = e.tokenize(" ".join(reversed(PROMPTS)) * 12)[:1400]
        alone = e.generate(b_ids, **kw)
        a = e.submit(a_ids, **kw)
        b = e.submit(b_ids, **kw)
        threading.Timer(0.4, a.cancel).start()  # (the first step, two 1024-row chunks, takes seconds)
        assert b.result() == alone
        assert a.result() == "" and a.finish_reason == "cancelled" and len(a.tokens) == 0
        assert a.stats["n_past"] == 0  # left mid-step: its sequence reset, not holding a chunk
        after = [e.submit(p, **kw) for p in PROMPTS[2:4]]  # (both sequences)
        after = [h.result() for h in after]
    with tova.Engine(smollm2_path, **settings) as fresh:
        assert after == [fresh.generate(p, **kw) for p in PROMPTS[2:4]]


@pytest.mark.model
def test_dropped_handle_is_cancelled(smollm2_path):
    with tova.Engine(smollm2_path, kv_size=64, n_seq=1, n_threads=2) as e:
        h = e.submit(PROMPTS[0], max_tokens=500, ignore_eos=True, temperature=0)
        del h  # the only sequence would be busy for 500 tokens: dropping the handle frees it
        assert e.generate(PROMPTS[3], max_tokens=8, temperature=0) == \
            e.generate(PROMPTS[3], max_tokens=8, temperature=0)


@pytest.mark.model
def test_long_prompt_joins_without_stalling(smollm2_path):
    kw = dict(max_tokens=40, temperature=0, ignore_eos=True)
    chunk = 16
    long_prompt = PROMPTS[6] * 3
    with tova.Engine(smollm2_path, kv_size=64, n_seq=2, chunk=chunk, n_threads=2) as e:
        n_long = len(e.tokenize(long_prompt))
        assert n_long > 8 * chunk
        a_alone = e.generate(PROMPTS[0], **kw)
        b_alone = e.generate(long_prompt, **kw)
        a = e.submit(PROMPTS[0], **kw)
        while not a.tokens:
            e._e.step()
        b = e.submit(long_prompt, **kw)
        # Every step decodes a's next token while b's prompt is read one chunk at a time.
        for k in range(1, 8):
            before = len(a.tokens)
            assert e._e.step()
            assert len(a.tokens) == before + 1
            assert not b.tokens  # b is still reading its prompt (n_long > 8 chunks)
        assert a.result() == a_alone
        assert b.result() == b_alone


@pytest.mark.model
def test_a_sequence_finishing_mid_batch(smollm2_path):
    with tova.Engine(smollm2_path, kv_size=64, n_seq=4, n_threads=2) as e:
        lengths = [3, 40, 10, 25]
        solo = [e.generate(p, max_tokens=n, temperature=0, ignore_eos=True)
                for p, n in zip(PROMPTS, lengths)]
        handles = [e.submit(p, max_tokens=n, temperature=0, ignore_eos=True)
                   for p, n in zip(PROMPTS, lengths)]
        assert [h.result() for h in handles] == solo
        assert [len(h.tokens) for h in handles] == lengths
        assert all(h.finish_reason == "length" for h in handles)
        assert sorted(h.seq for h in handles) == [0, 1, 2, 3]


@pytest.mark.model
def test_async_iteration(smollm2_path):
    import asyncio

    with tova.Engine(smollm2_path, kv_size=64, n_seq=2, n_threads=2) as e:
        expected = [e.generate(p, max_tokens=12, temperature=0) for p in PROMPTS[:3]]

        async def one(p):
            return "".join([piece async for piece in e.submit(p, max_tokens=12, temperature=0)])

        async def main():
            return await asyncio.gather(*(one(p) for p in PROMPTS[:3]))

        assert asyncio.run(main()) == expected


@pytest.mark.model
def test_per_sequence_introspection_and_policy_view_seq(smollm2_path):
    seen = set()

    class Oldest(tova.Policy):
        name = "oldest"
        needs_probs = False

        def select(self, layer, view):
            seen.add(int(view.seq))
            pos = view.pos.copy().astype(np.int64)
            pos[(pos < 0) | (view.protect != 0)] = np.iinfo(np.int64).max
            return list(np.argsort(pos, kind="stable")[: view.n_evict])

    with tova.Engine(smollm2_path, kv_size=32, n_seq=2, policy=Oldest(), n_threads=2) as e:
        hs = [e.submit(p, max_tokens=40, temperature=0, ignore_eos=True) for p in PROMPTS[:2]]
        for h in hs:
            h.result()
        assert seen == {0, 1}
        for h in hs:
            kept = e.kv_positions(0, seq=h.seq)
            assert len(kept) == 32
            n = e.n_past_of(h.seq)
            assert list(kept) == list(range(n - 32, n))  # the oldest went first
    with pytest.raises(ValueError, match="sequence 2 is out of range"):
        tova.Engine(smollm2_path, kv_size=32, n_seq=2, n_threads=1).kv_positions(0, seq=2)


@pytest.mark.model
def test_kv_budget_sizes_n_seq(smollm2_path):
    with tova.Engine(smollm2_path, kv_size=256, n_threads=1) as one:
        per_seq = one.kv_bytes_per_seq
    budget = 5 * per_seq + per_seq // 2
    with tova.Engine(smollm2_path, kv_size=256, kv_budget=budget, n_threads=1) as e:
        assert e.n_seq == 5
        assert e.kv_bytes == 5 * per_seq <= budget
    with tova.Engine(smollm2_path, kv_size=256, kv_budget=f"{budget / 2**20}MiB", n_threads=1) as e:
        assert e.n_seq == 5
    with pytest.raises(ValueError, match="too small for one sequence"):
        tova.Engine(smollm2_path, kv_size=256, kv_budget=per_seq - 1)
    with pytest.raises(ValueError, match="not a size"):
        tova.Engine(smollm2_path, kv_budget="lots")
    with pytest.raises(ValueError, match="n_seq or kv_budget"):
        tova.Engine(smollm2_path, kv_budget="64MiB", n_seq=2)


@pytest.mark.model
@pytest.mark.parametrize("kwargs, message", [
    (dict(chunk=10**6), "chunk must be in"),
    (dict(n_seq=10**6), "n_seq must be in"),
    (dict(n_threads=10**6), "n_threads must be at most 512"),
    (dict(kv_size=10**9), "kv_size must be at most"),
    (dict(policy="full", n_ctx=10**9), "n_ctx must be in"),
    (dict(policy="full", n_ctx=4_000_000, n_seq=1000), "more than the memory this process can take"),
    (dict(n_batch=8, chunk=64), "smaller than chunk"),
    (dict(kv_type="f8"), "unknown kv_type 'f8'"),
    (dict(prefill="lazy"), "unknown prefill mode 'lazy'"),
    (dict(positions="absolute"), "unknown positions mode"),
    (dict(policy="lru"), "unknown policy 'lru'"),
])
def test_settings_out_of_bounds_raise(smollm2_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tova.Engine(smollm2_path, **kwargs)


@pytest.mark.model
def test_settings_beyond_the_address_space_limit_raise(smollm2_path):
    """Under `ulimit -v` (RLIMIT_AS) the memory a process can take is its limit less what it maps:
    settings that need more are refused before anything is allocated, saying so, not a bare
    std::bad_alloc (tova run printed "error: std::bad_alloc")."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import resource, tova
        with open("/proc/self/status") as f:
            mapped = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
        limit = mapped + (1 << 30)  # what Python maps now, and 1 GiB more (the model is 98 MiB)
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
        try:
            tova.Engine({str(smollm2_path)!r}, n_threads=1, n_seq=64, kv_size=8192)
        except ValueError as e:
            print("refused:", e)
        with tova.Engine({str(smollm2_path)!r}, n_threads=1, kv_size=64) as e:  # small settings still run
            print("ran:", len(e.generate("Hi", max_tokens=2, temperature=0)) >= 0)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "refused: these settings need" in r.stdout and "ulimit -v" in r.stdout, r.stdout
    assert "ran: True" in r.stdout, r.stdout


@pytest.mark.model
def test_cli_bench_batch(smollm2_path):
    import json
    import subprocess

    from tova import _cli

    out = subprocess.run([str(_cli.binary()), "bench", "-m", str(smollm2_path), "-p", "16", "-n", "8",
                          "-r", "1", "-t", "2", "--batch", "3", "--kv-size", "64", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    batch = [r for r in rows if r.get("n_seq") == 3]
    assert batch and batch[0]["n_gen"] == 8 and batch[0]["avg_ts"] > 0
    # It measures decoding: no tokens to decode is a usage error, not a row of zeros.
    out = subprocess.run([str(_cli.binary()), "bench", "-m", str(smollm2_path), "-p", "16", "-n", "0",
                          "--batch", "2"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "-n must be at least 1" in out.stderr, out.stderr


@pytest.mark.model
def test_python_policy_shared_by_threads_does_not_deadlock(smollm2_path):
    # Each callback of a Python policy takes the GIL from the stepping thread while other threads
    # hold it and read the engine: nothing may wait on both.
    resets = []

    class Recent(tova.Policy):
        name = "recent"
        needs_probs = True

        def select(self, layer, view):
            pos = view.pos.astype(np.int64).copy()
            pos[(pos < 0) | (view.protect != 0)] = np.iinfo(np.int64).max
            return list(np.argsort(pos, kind="stable")[: view.n_evict])

        def reset_sequence(self, seq):
            resets.append(seq)

    with tova.Engine(smollm2_path, kv_size=24, n_seq=3, policy=Recent(), n_threads=2) as e:
        expected = [e.generate(p, max_tokens=12, temperature=0) for p in PROMPTS[:6]]
        got = [None] * 6
        stop = threading.Event()

        def reader():
            while not stop.is_set():
                for s in range(3):
                    e.n_past_of(s)
                    e.kv_positions(0, seq=s)

        def worker(i):
            got[i] = e.generate(PROMPTS[i], max_tokens=12, temperature=0)

        r = threading.Thread(target=reader)
        r.start()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        stop.set()
        r.join(timeout=30)
        assert not any(t.is_alive() for t in threads) and not r.is_alive(), "deadlock"
        assert got == expected
        assert set(resets) <= {0, 1, 2} and len(resets) >= 12


@pytest.mark.model
def test_a_failing_policy_fails_only_its_sequence(smollm2_path):
    class Boom(RuntimeError):
        pass

    class FailsOnSeq1(tova.Policy):
        name = "fails-on-seq-1"
        needs_probs = True

        def select(self, layer, view):
            if view.seq == 1 and view.t >= 40:
                raise Boom("no victim for you")
            pos = view.pos.astype(np.int64).copy()
            pos[(pos < 0) | (view.protect != 0)] = np.iinfo(np.int64).max
            return list(np.argsort(pos, kind="stable")[: view.n_evict])

    kw = dict(max_tokens=40, temperature=0, ignore_eos=True)
    with tova.Engine(smollm2_path, kv_size=24, n_seq=3, policy=FailsOnSeq1(), n_threads=2) as e:
        solo = e.generate(PROMPTS[0], **kw)  # runs in sequence 0
        hs = [e.submit(p, **kw) for p in PROMPTS[:3]]
        results = []
        for h in hs:
            try:
                results.append(h.result())
            except Boom as ex:  # the policy's own exception reaches the request's waiter
                results.append(ex)
        failed = [i for i, r in enumerate(results) if isinstance(r, Boom)]
        assert failed == [1] and hs[1].finish_reason == "error"
        with pytest.raises(Boom):  # every time it is asked, not once
            hs[1].result()
        assert results[0] == solo
        assert isinstance(results[2], str) and len(hs[2].tokens) == 40
        # The engine goes on: sequence 1 was reset and serves the next request.
        assert e.generate(PROMPTS[0], **kw) == solo


@pytest.mark.model
def test_handle_logprobs_match_the_logits(smollm2_path):
    with tova.Engine(smollm2_path, kv_size=64, n_seq=2, n_threads=2) as e:
        ids = e.tokenize(PROMPTS[0])
        h = e.submit(ids, max_tokens=3, temperature=0, ignore_eos=True, logprobs=5)
        h.result()
        lps = h.logprobs()
        assert [t for t, _, _ in lps] == h.tokens
        # The first token's distribution is the prompt's last logits.
        e.reset(seq=1)
        logits = e.eval(ids, seq=1).astype(np.float64)
        ref = logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
        tok, lp, top = lps[0]
        assert lp == pytest.approx(ref[tok], abs=1e-4)
        order = np.argsort(-ref, kind="stable")[:5]
        assert [t for t, _ in top] == list(order)
        assert [b for _, b in top] == pytest.approx(list(ref[order]), abs=1e-4)
        assert tok == top[0][0]  # greedy
        assert e.submit(ids, max_tokens=2, temperature=0).logprobs() == []  # not asked: none kept
        with pytest.raises(ValueError, match=r"logprobs must be in \[0, 20\]"):
            e.submit(ids, max_tokens=2, logprobs=21)


@pytest.mark.model
@pytest.mark.parametrize("policy", ["tova", "h2o"])
def test_reuse_prefix_continues_a_conversation_exactly(smollm2_path, policy):
    """A request whose prompt extends what a free sequence holds continues it, reading only the
    new tokens, and gets exactly the text of reading everything (evictions included)."""
    kw = dict(max_tokens=12, temperature=0, ignore_eos=True)
    with tova.Engine(smollm2_path, kv_size=32, n_seq=2, policy=policy, n_threads=2) as e:
        first = e.tokenize(PROMPTS[6])  # longer than kv_size: its reading evicts
        h = e.submit(first, reuse_prefix=True, **kw)
        h.result()
        held = first + h.tokens[:-1]  # the last sampled token is never evaluated
        follow = held + e.tokenize(" Then the lamp", add_bos=False)
        alone = tova.Engine(smollm2_path, kv_size=32, policy=policy, n_threads=2)
        want = alone.generate(follow, **kw)
        alone.close()
        h2 = e.submit(follow, reuse_prefix=True, **kw)
        assert h2.result() == want
        assert h2.stats["cached_tokens"] == len(held) and h2.seq == h.seq
        # A prompt that does not extend it reads everything, in another sequence or from empty.
        h3 = e.submit(e.tokenize(PROMPTS[1]), reuse_prefix=True, **kw)
        assert h3.result() == e.generate(PROMPTS[1], **kw)
        assert h3.stats["cached_tokens"] == 0


@pytest.mark.model
def test_dropped_failed_request_does_not_deadlock_readers(smollm2_path, tmp_path):
    """A request whose policy failed (its error a Python exception) and whose handle was dropped
    is released after the step, not under the engine's lock: a thread reading a handle then
    (holding the GIL) cannot deadlock the stepping thread (which needs the GIL to free it)."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import faulthandler, threading, time
        import numpy as np, tova
        faulthandler.dump_traceback_later(60, exit=True)  # a hang prints the stacks and fails
        in_reset = threading.Event()

        class P(tova.Policy):
            name = "resetfail"
            needs_probs = False
            def select(self, layer, view):
                pos = np.array(view.pos)
                cand = [i for i in range(view.n_slots) if pos[i] >= 0 and not view.protect[i]]
                return sorted(cand, key=lambda i: pos[i])[:view.n_evict]
            def reset_sequence(self, seq):
                if seq == 1:
                    in_reset.set()
                    time.sleep(0.5)  # (the GIL released) the handle is dropped meanwhile
                    raise RuntimeError("reset_sequence failed for seq 1")

        e = tova.Engine({str(smollm2_path)!r}, n_threads=1, n_seq=2, kv_size=16, chunk=8, policy=P())
        h1 = e.submit("Hello " * 20, max_tokens=100, temperature=0, ignore_eos=True)
        h2 = e.submit("World " * 20, max_tokens=100, temperature=0, ignore_eos=True)
        t = threading.Thread(target=lambda: [None for _ in h1], daemon=True)
        t.start()
        in_reset.wait(30)
        del h2  # a client that went away
        stop = False
        def poll():
            while not stop:
                h1.tokens  # the engine's lock, taken with the GIL held
        threading.Thread(target=poll, daemon=True).start()
        t.join(60)
        stop = True
        print("finished", not t.is_alive(), h1.finish_reason)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and "finished True length" in r.stdout, (r.stdout, r.stderr[-3000:])


@pytest.mark.model
def test_last_stats_keep_the_occupancy_of_the_finished_generation(smollm2_path):
    """last_stats' n_past and evictions are those of the generation that finished, not of what
    its sequence runs afterwards."""
    with tova.Engine(smollm2_path, n_threads=1, kv_size=32, chunk=8, n_seq=2) as e:
        e.generate("The capital of France is", max_tokens=5, temperature=0, ignore_eos=True)
        first = e.last_stats
        assert first["evictions"] == 0 and first["n_past"] == first["prompt_tokens"] + 4
        h = e.submit("Once upon a time there was a fox. " * 12, max_tokens=50, temperature=0, ignore_eos=True)
        for _ in range(3):
            h.next()
        assert h.stats["evictions"] > 0  # the new one evicts in the same sequence ...
        later = e.last_stats
        for key in ("n_past", "evictions", "demotions", "prompt_tokens", "seq"):
            assert later[key] == first[key], key  # ... but the finished one's figures stay
        h.cancel()


def test_generation_takes_another_sequence_than_evals(smollm2_path):
    """What eval builds in a sequence is its caller's: a generation not given a sequence takes
    another free one, so scoring step by step beside generations stays exact; with no other
    free sequence, it takes that one (and clears it)."""
    with tova.Engine(smollm2_path, n_threads=1, kv_size=64, n_seq=2) as ref:
        a = ref.tokenize("The capital of France is Paris. The capital of Italy")
        b = ref.tokenize(" is", add_bos=False)
        ref.eval(a, seq=1)
        want = ref.eval(b, seq=1)
    for seq in (0, 1):
        with tova.Engine(smollm2_path, n_threads=1, kv_size=64, n_seq=2) as e:
            e.eval(a, seq=seq)
            e.generate("Hello there", max_tokens=3, temperature=0)
            assert e.last_stats["seq"] == 1 - seq
            assert e.n_past_of(seq) == len(a)
            np.testing.assert_array_equal(e.eval(b, seq=seq), want)
    with tova.Engine(smollm2_path, n_threads=1, kv_size=64, n_seq=1) as e:
        e.eval(a)
        e.generate("Hello there", max_tokens=3, temperature=0)  # the only sequence
        assert e.last_stats["seq"] == 0 and e.n_past_of(0) < len(a) + 3


def test_last_stats_of_a_stream_left_early(smollm2_path):
    """A stream left by `break` is cancelled, and what it did is the last statistics (as a chat
    stream's are), not the generation before it."""
    with tova.Engine(smollm2_path, n_threads=1, kv_size=64) as e:
        e.generate("Hi", max_tokens=3, temperature=0, ignore_eos=True)
        prompt = "Once upon a time there was a little fox who lived in a forest"
        for _ in e.stream(prompt, max_tokens=50, temperature=0, ignore_eos=True):
            break
        stats = e.last_stats
        assert stats["prompt_tokens"] == len(e.tokenize(prompt, special=True))
        assert stats["finish_reason"] == "cancelled"
        assert 1 <= stats["completion_tokens"] < 50
        # A handle is not a stream: leaving a loop over it does not stop it (as with a file);
        # a later loop or result() goes on where the last one left.
        whole = e.submit(prompt, max_tokens=6, temperature=0, ignore_eos=True).result()
        h = e.submit(prompt, max_tokens=6, temperature=0, ignore_eos=True)
        first = ""
        for first in h:
            break
        second = next(iter(h))
        assert first + second + h.result() == whole and h.finish_reason == "length"

        async def read_in_two_loops() -> str:
            h = e.submit(prompt, max_tokens=6, temperature=0, ignore_eos=True)
            text = ""
            async for piece in h:
                text += piece
                break
            async for piece in h:
                text += piece
            return text

        assert asyncio.run(read_in_two_loops()) == whole


def test_eval_tokens_outrank_a_conversation_and_are_not_reused(smollm2_path):
    """With a conversation in one sequence and eval's tokens in the other, a generation takes
    the conversation's (its next turn notices and reads it again), never eval's silently; and
    reuse_prefix does not continue eval's tokens."""
    with tova.Engine(smollm2_path, n_threads=1, kv_size=64, n_seq=2) as e:
        e.chat([{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0)
        ids = e.tokenize("The capital of France is Paris. The capital of Italy")
        e.eval(ids, seq=1)
        e.generate("Hello there", max_tokens=3, temperature=0)
        assert e.last_stats["seq"] == 0 and e.n_past_of(1) == len(ids)
        h = e.submit(ids + e.tokenize(" is", add_bos=False), max_tokens=2, temperature=0,
                     reuse_prefix=True)
        h.result()
        assert h.seq == 0 and h.stats["cached_tokens"] == 0 and e.n_past_of(1) == len(ids)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads Linux's /proc")
def test_dropped_handles_free_their_requests_at_once(smollm2_path):
    """Handles dropped with nobody waiting leave the queue when dropped, not at the next wait
    (about 4 KB each were held until then: 10,000 of them, about 40 MB)."""
    with tova.Engine(smollm2_path, n_threads=1, kv_size=32, n_seq=1) as e:
        prompt = e.tokenize("Once upon a time there was a little fox")
        for _ in range(200):  # warm the allocator
            e.submit(prompt, max_tokens=2)
        before = _rss_bytes()
        for _ in range(10000):
            e.submit(prompt, max_tokens=2)
        grown = _rss_bytes() - before
        assert grown < 12 * 2 ** 20, f"{grown / 2 ** 20:.1f} MiB held by dropped handles"
        assert e.generate("Hi", max_tokens=2, temperature=0)
