"""Engines across fork() and policies that call engines: a clear answer or a clear error, never a
hang. Each case runs in its own Python process (a fork inside pytest would copy pytest)."""
import subprocess
import sys
import textwrap

import pytest

from reference.synthetic import write_llama_gguf


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("proc") / "m.gguf"
    write_llama_gguf(path, seed=3)
    return str(path)


def run_script(body: str, model: str, timeout: float = 120) -> subprocess.CompletedProcess:
    script = "import os, signal, sys, threading, time, numpy as np, tova\n" + f"M = {model!r}\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)


def test_an_idle_engine_goes_on_in_a_forked_child(model):
    """Forked while no thread is inside tova: the child's engine answers as the parent's does
    (its compute threads started anew: n_threads 2) and closes without waiting for the parent's
    threads (before, closing it in the child hung)."""
    r = run_script("""
        e = tova.Engine(M, kv_size=16, n_threads=2)
        want = e.generate("hello world", max_tokens=12, temperature=0, ignore_eos=True)
        pid = os.fork()
        if pid == 0:
            signal.alarm(60)
            got = e.generate("hello world", max_tokens=12, temperature=0, ignore_eos=True)
            e.close()
            del e
            import gc; gc.collect()
            os._exit(0 if got == want else 3)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status), flush=True)
        e.close()
    """, model)
    assert r.returncode == 0 and "child 0" in r.stdout, (r.stdout, r.stderr)


def test_an_engine_busy_at_fork_is_refused_in_the_child(model):
    """Forked while another thread generates: the child's calls on the engines and handles made
    before raise a RuntimeError saying why (before, the first one hung), a new engine works, and
    the child exits at once (the exit hook does not wait for the parent's threads)."""
    r = run_script("""
        e = tova.Engine(M, kv_size=16, n_threads=2)
        h = e.submit("hi", max_tokens=10**6, ignore_eos=True)
        t = threading.Thread(target=lambda: e.generate("hello", max_tokens=10**6, ignore_eos=True), daemon=True)
        t.start()
        time.sleep(0.3)
        pid = os.fork()
        if pid == 0:
            signal.alarm(60)
            out = []
            for call in (lambda: e.generate("x", max_tokens=2), lambda: h.next(timeout=1), lambda: e.n_past):
                try:
                    call()
                    out.append("answered")
                except RuntimeError as ex:
                    out.append("refused" if "forked while another thread was inside tova" in str(ex) else repr(ex))
            f = tova.Engine(M, kv_size=16, n_threads=2)
            out.append(len(f.generate("hello", max_tokens=3, temperature=0, ignore_eos=True)) > 0)
            print(out, flush=True)
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status), flush=True)
        h.cancel()
        e.close()
    """, model)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "['refused', 'refused', 'refused', True]" in r.stdout and "child 0" in r.stdout, (r.stdout, r.stderr)


def test_policies_calling_each_others_engines_are_refused(model):
    """Two engines whose Python policies call the other engine, generating in two threads: each
    policy's call is refused (TovaError naming the cause), never both threads waiting for each
    other (before: a hang in about one run of three)."""
    r = run_script("""
        other = {}
        class Q(tova.Policy):
            name = "q"
            def __init__(self, key): self.key = key
            def select(self, layer, view):
                if layer == 0: other[self.key].eval([5])
                score = np.where((view.protect == 1) | (view.pos < 0), np.inf, view.probs_mean)
                return [int(i) for i in np.argsort(score, kind="stable")[:view.n_evict]]
        e1 = tova.Engine(M, kv_size=4, policy=Q("e2"), n_threads=1)
        e2 = tova.Engine(M, kv_size=4, policy=Q("e1"), n_threads=1)
        other.update(e1=e1, e2=e2)
        res = {}
        def g(name, e):
            try:
                res[name] = e.generate("hello world again", max_tokens=8, temperature=0, ignore_eos=True)
            except tova.TovaError as ex:
                res[name] = str(ex)
        ts = [threading.Thread(target=g, args=(n, e), daemon=True) for n, e in (("a", e1), ("b", e2))]
        for t in ts: t.start()
        for t in ts: t.join(30)
        assert not any(t.is_alive() for t in ts), "hang"
        print(sorted(res.values()), flush=True)
    """, model)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert r.stdout.count("called from inside another engine's step") == 2, r.stdout


def test_a_policy_may_not_submit_to_an_engine(model):
    """submit() from a policy callback is refused as every other engine call is (before, it
    queued a request that the callback could never see run)."""
    r = run_script("""
        target = {}
        class Q(tova.Policy):
            name = "q"
            def select(self, layer, view):
                if layer == 0: target["e"].submit("hi", max_tokens=2)
                score = np.where((view.protect == 1) | (view.pos < 0), np.inf, view.probs_mean)
                return [int(i) for i in np.argsort(score, kind="stable")[:view.n_evict]]
        for own in (True, False):
            e = tova.Engine(M, kv_size=4, policy=Q(), n_threads=1)
            target["e"] = e if own else tova.Engine(M, kv_size=4, n_threads=1)
            try:
                e.generate("hello world again", max_tokens=4, temperature=0, ignore_eos=True)
                print("accepted", flush=True)
            except tova.TovaError as ex:
                print("refused:", ex, flush=True)
    """, model)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "accepted" not in r.stdout, r.stdout
    assert "inside its own step" in r.stdout and "inside another engine's step" in r.stdout, r.stdout
