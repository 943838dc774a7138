"""The tova program as a user runs it: version, info, run, bench, bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import tova
from tova import _core

from tova._cli import binary


def run(*args, timeout=300, env=None, **kw):
    env = env or dict(os.environ, TOVA_PYTHON=sys.executable)
    return subprocess.run([str(binary()), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


def test_version():
    r = run("--version")
    assert r.returncode == 0
    assert r.stdout.startswith("tova 0.1.0")


def test_python_dash_m_runs_the_binary():
    r = subprocess.run([sys.executable, "-m", "tova", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("tova 0.1.0")


def test_unknown_command_and_option():
    r = run("frobnicate")
    assert r.returncode == 2 and "unknown command 'frobnicate'" in r.stderr
    r = run("run", "--bogus", "1")
    assert r.returncode == 2 and r.stderr.strip() == "tova: error: unknown option --bogus (see --help)"


def test_each_command_has_help():
    for cmd, first in (("bench", "usage: tova bench"), ("info", "usage: tova info"), ("run", "usage: tova")):
        r = run(cmd, "--help")
        assert r.returncode == 0 and r.stdout.startswith(first), (cmd, r.stderr)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from reference.synthetic import write_llama_gguf

    path = tmp_path_factory.mktemp("cli") / "tiny.gguf"
    write_llama_gguf(path)
    return path


@pytest.mark.parametrize("args, message", [
    (["run", "-p", "hi", "-n", "2", "extra", "words"], "unexpected argument 'extra'"),
    (["bench", "-p", "8", "-n", "2", "extra"], "unexpected argument 'extra'"),
    (["run", "-p", "hi", "--json"], "unknown option --json"),  # bench's options are bench's
    (["run", "-p", "hi", "-r", "5"], "unknown option -r"),
    (["run", "-p", "hi", "--seed", "9223372036854775808"], "option --seed is out of range"),
    (["run", "-p", "hi", "--policy-args", "x"], "--policy-args are arguments for a --policy-plugin"),
    (["run", "-p", "hi", "--policy", "h2o", "--policy-plugin", "x.so"], "give one"),
    (["bench", "-p", "2000000000", "-n", "2000000000"], "-d + -p + -n = 4000000000 tokens"),
    # -n as written is named (not max_tokens, nor the long name); -1 is no limit, -2 nothing.
    (["run", "-p", "hi", "-n", "-2"], "option -n must be at least 0, or -1 for no limit; got -2"),
    (["run", "-p", "hi", "-n", "x"], "option -n needs an integer, got 'x'"),
    (["run", "-p", "hi", "--n-sink", "-1"], "--n-sink must be >= 0, got -1"),  # (-1: the core's "default")
    (["run", "-p", "hi", "-ctk", "q3_k"], "unknown --kv-type-k (-ctk) 'q3_k'"),
])
def test_refused_arguments(tiny_model, args, message):
    r = run(*args, "-m", tiny_model)
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_help_documents_the_exit_statuses():
    r = run("--help")
    assert r.returncode == 0 and "exit status:" in r.stdout
    for line in ("0    success", "1    a runtime error", "2    a usage error", "130  interrupted",
                 "141  stdout's reader went away", "143  terminated"):
        assert line in r.stdout, line


def test_n_predict_minus_one_is_no_limit(tiny_model):
    # The full cache of 48 ends the generation, not a token count.
    r = run("run", "-m", tiny_model, "-p", "hi", "-n", "-1", "--ignore-eos", "--policy", "full",
            "--ctx", "48", "-t", "1")
    assert r.returncode == 0, r.stderr
    assert "finish: length" in r.stderr and "generated: 0 tokens" not in r.stderr


def test_prompt_past_the_trained_context_warns_once(tmp_path):
    from reference.synthetic import write_llama_gguf

    path = tmp_path / "ctx32.gguf"
    write_llama_gguf(path, context_length=32)
    prompt = "hello world " * 10  # ~120 tokens of this tokenizer
    r = run("run", "-m", path, "-p", prompt, "-n", "2", "--kv-size", "16", "-t", "1")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("warning") == 1, r.stderr
    assert "past the model's trained context (32) with --positions original" in r.stderr
    r = run("run", "-m", path, "-p", prompt, "-n", "2", "--kv-size", "16", "-t", "1",
            "--positions", "cache_index")
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr


def test_run_without_kv_size_on_a_model_trained_on_fewer_than_512_tokens(tmp_path):
    from reference.synthetic import write_llama_gguf

    path = tmp_path / "ctx32.gguf"
    write_llama_gguf(path, context_length=32)
    r = run("run", "-m", path, "-p", "hello world", "-n", "2", "-t", "1")
    assert r.returncode == 0, r.stderr
    r = run("run", "-m", path, "-p", "hello world", "-n", "2", "-t", "1", "--kv-size", "64")
    assert r.returncode != 0 and "kv_size 64 is larger than the model's context 32" in r.stderr


# ---- stdout that cannot be written: `tova: write error: ...` and exit 1 (as GNU programs) ----------
def run_to(stdout, *args, shell_redirect="", **kw):
    """Runs tova with stdout sent to `stdout` (a file object), or closed (shell_redirect=">&-")."""
    env = dict(os.environ, TOVA_PYTHON=sys.executable)
    cmd = [str(binary()), *map(str, args)]
    if shell_redirect:
        cmd = ["sh", "-c", f'exec "$0" "$@" {shell_redirect}', *cmd]
    return subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120, env=env, **kw)


@pytest.mark.parametrize("args", [
    ["--version"],
    ["info", "{m}"],
    ["bench", "-m", "{m}", "-p", "8", "-n", "2", "-r", "1", "-t", "1", "--json"],
    ["run", "-m", "{m}", "-p", "hi", "-n", "4", "-t", "1"],
])
def test_a_full_disk_is_a_write_error(tiny_model, args):
    with open("/dev/full", "w") as full:
        r = run_to(full, *(a.format(m=tiny_model) for a in args))
    assert r.returncode == 1 and r.stderr.endswith("tova: write error: No space left on device\n"), r.stderr


def test_a_closed_stdout_is_a_write_error(tiny_model):
    r = run_to(None, "run", "-m", tiny_model, "-p", "hi", "-n", "4", "-t", "1", shell_redirect=">&-")
    assert r.returncode == 1 and "tova: write error: Bad file descriptor" in r.stderr, r.stderr
    r = run_to(None, "info", tiny_model, shell_redirect=">&-")
    assert r.returncode == 1 and "tova: write error: Bad file descriptor" in r.stderr, r.stderr


def start_run_into_a_closed_pipe(model, **kw):
    """A long generation whose reader takes the first bytes and goes away."""
    p = subprocess.Popen([str(binary()), "run", "-m", str(model), "-p", "Hello", "-n", "100000",
                          "--ignore-eos", "--temp", "0", "-t", "1"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=dict(os.environ, TOVA_PYTHON=sys.executable), **kw)
    os.read(p.stdout.fileno(), 20)
    p.stdout.close()
    t0 = time.monotonic()
    try:
        p.wait(timeout=60)
    finally:
        p.kill()
    return p, time.monotonic() - t0


@pytest.mark.model
def test_a_closed_pipe_stops_the_generation(smollm2_path):
    # SIGPIPE ignored (as Python, nohup-like wrappers leave it): EPIPE is a write error, at once.
    p, seconds = start_run_into_a_closed_pipe(smollm2_path, restore_signals=False)
    assert p.returncode == 1 and seconds < 10, (p.returncode, seconds)
    assert p.stderr.read().decode().endswith("tova: write error: Broken pipe\n")
    # SIGPIPE as usual: the signal ends it (a shell says 141).
    p, seconds = start_run_into_a_closed_pipe(smollm2_path)
    assert p.returncode == -signal.SIGPIPE and seconds < 10


@pytest.mark.model
def test_run_reads_special_tokens_in_the_prompt(smollm2_path, tmp_path):
    """<|im_start|> in -p / -f is the control token (llama-cli's parse_special), so a prompt in
    the model's chat format is answered as a chat."""
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    (tmp_path / "chat.txt").write_text(prompt + "\n")  # (an editor's final line break: not read)
    r = run("run", "-m", smollm2_path, "-f", tmp_path / "chat.txt", "-n", "8", "--temp", "0", "-t", "1")
    assert r.returncode == 0, r.stderr
    with tova.Engine(smollm2_path) as e:
        n_special = len(e.tokenize(prompt, special=True))
        assert n_special < len(e.tokenize(prompt, special=False))
    assert f"prompt: {n_special} tokens" in r.stderr, r.stderr
    assert r.stdout.startswith("The capital of France is Paris"), r.stdout


@pytest.mark.model
def test_prompt_from_stdin(smollm2_path):
    r = run("run", "-m", smollm2_path, "-f", "-", "-n", "3", "--temp", "0", "-t", "1",
            input="The capital of France is\n")  # (echo's line break: not part of the prompt)
    assert r.returncode == 0, r.stderr
    assert "prompt: 5 tokens" in r.stderr and "Paris" in r.stdout, (r.stdout, r.stderr)
    # A file from Windows: a byte order mark and a final CR LF are not part of the prompt either.
    w = run("run", "-m", smollm2_path, "-f", "-", "-n", "3", "--temp", "0", "-t", "1",
            input="\ufeffThe capital of France is\r\n")
    assert w.returncode == 0 and "prompt: 5 tokens" in w.stderr and w.stdout == r.stdout, (w.stdout, w.stderr)


@pytest.mark.model
def test_run_stopped_by_ctrl_c_while_reading_the_prompt(smollm2_path, tmp_path):
    """SIGINT while `tova run` reads a long prompt as one chunk stops it within a layer: exit
    130, and the summary says the reading was interrupted (no speed for a prompt not read)."""
    (tmp_path / "long.txt").write_text("word " * 3000)
    p = subprocess.Popen([str(binary()), "run", "-m", str(smollm2_path), "-f", str(tmp_path / "long.txt"),
                          "-n", "8", "-t", "1", "--policy", "full", "--ctx", "4096", "--chunk", "3072"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)  # (loaded, and reading: about 5 s of work on one thread)
    t0 = time.time()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert time.time() - t0 < 2.5
    assert "prompt: 3001 tokens, reading interrupted | generated: 0 tokens" in err, err


def test_info_takes_one_model(tiny_model):
    r = run("info", tiny_model, "extra")
    assert r.returncode == 2 and "takes one model" in r.stderr


def test_bench_refuses_n_seq(tiny_model):
    """--n-seq would hold N caches and still measure one sequence: bench says to use --batch."""
    r = run("bench", "-m", tiny_model, "-p", "0", "-n", "2", "--n-seq", "3")
    assert r.returncode == 2 and "--batch N measures N sequences" in r.stderr, r.stderr


def test_a_directory_as_the_prompt_file(tiny_model, tmp_path):
    r = run("run", "-m", tiny_model, "-f", tmp_path)
    assert r.returncode == 1 and "Is a directory" in r.stderr, r.stderr


def test_unknown_kernel_tier_is_said(tiny_model):
    env = dict(os.environ, TOVA_PYTHON=sys.executable, TOVA_CPU_KERNELS="AVX2")
    r = subprocess.run([str(binary()), "info", str(tiny_model)], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "TOVA_CPU_KERNELS=AVX2 is not a kernel tier" in r.stderr


def test_bench_json_escapes_the_file_name(tiny_model, tmp_path):
    odd = tmp_path / 'my"model\\x.gguf'
    odd.symlink_to(tiny_model)
    r = run("bench", "-m", odd, "-p", "8", "-n", "0", "-r", "1", "-t", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["model_filename"] == odd.name


def test_missing_model():
    r = run("run", "-m", "/nonexistent/m.gguf", "-p", "hi")
    assert r.returncode == 1
    assert "'/nonexistent/m.gguf' is not an existing file" in r.stderr and r.stderr.count("\n") == 1


def test_models_are_named_as_in_python(tiny_model, tmp_path):
    """The CLI resolves what is not a file as Python does (one resolver): a directory is named as
    one, `~` is expanded, a name after `--` that starts with '-' is a name; a value forgotten
    before another option is said as such. One line each, no usage text of the resolver."""
    r = run("info", tmp_path)
    assert r.returncode == 1 and "is a directory, not a GGUF file" in r.stderr and r.stderr.count("\n") == 1
    r = run("info", "--", "-x")
    assert r.returncode == 1 and "'-x' is not an existing file" in r.stderr and r.stderr.count("\n") == 1
    home = tmp_path / "home"
    home.mkdir()
    (home / "m.gguf").symlink_to(tiny_model)
    r = run("info", "~/m.gguf", env=dict(os.environ, TOVA_PYTHON=sys.executable, HOME=str(home)))
    assert r.returncode == 0 and "GGUF v3" in r.stdout, r.stderr
    r = run("run", "-m", "--temp", "0", "-p", "hi")
    assert r.returncode == 2 and "option -m needs a value (got the option --temp)" in r.stderr
    r = run("run", "-m", tiny_model, "-p", "hi", "-n", "1", "--seed", "-1", "-t", "1")
    assert r.returncode == 0, r.stderr  # (a negative number is a value)


def test_corrupt_model(tmp_path):
    p = tmp_path / "bad.gguf"
    p.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 20)
    r = run("info", p)
    assert r.returncode == 1 and "tova: error:" in r.stderr and str(p) in r.stderr


@pytest.mark.model
def test_info(smollm2_path):
    r = run("info", smollm2_path)
    assert r.returncode == 0, r.stderr
    assert "general.architecture" in r.stdout and "llama" in r.stdout
    assert "load time:" in r.stdout and "resident:" in r.stdout
    assert "Q4_1 x210" in r.stdout


@pytest.mark.model
def test_run_greedy(smollm2_path):
    r = run("run", "-m", smollm2_path, "-p", "The capital of France is", "-n", "12", "--temp", "0",
            "-t", "2", "--policy", "full")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("The capital of France is Paris.\n\nThe United States")
    assert "prompt: 5 tokens" in r.stderr and "generated: 12 tokens" in r.stderr


@pytest.mark.model
def test_run_by_registry_name(smollm2_path, tmp_path):
    r = run("run", "-m", "smollm2-135m-instruct", "-p", "Hello", "-n", "3", "--temp", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Hello")
    # The registry's file name is a name too (as `tova list` shows it), from any directory.
    r = run("info", "SmolLM2-135M-Instruct.Q4_1.gguf", cwd=tmp_path)
    assert r.returncode == 0 and "SmolLM2-135M-Instruct.Q4_1.gguf" in r.stdout, r.stderr


@pytest.mark.model
def test_bench_json(smollm2_path):
    r = run("bench", "-m", smollm2_path, "-p", "32", "-n", "8", "-r", "1", "-t", "2", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(x["n_prompt"], x["n_gen"]) for x in rows] == [(32, 0), (0, 8)]
    for x in rows:
        assert x["avg_ts"] > 0 and len(x["samples_ts"]) == 1 and x["n_threads"] == 2
        assert x["n_depth"] == 0 and x["cpu_kernels"] == _core.kernel_isa()


@pytest.mark.model
def test_bench_depth(smollm2_path):
    """-d D: the test runs after D tokens of history; with kv_size 64 the store stays that size
    (an evicting policy), with the full cache the context is sized for the history."""
    r = run("bench", "-m", smollm2_path, "-p", "0", "-n", "4", "-d", "100", "-r", "1", "--json",
            "--policy", "tova", "--kv-size", "64")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert (row["n_depth"], row["n_gen"], row["kv_size"], row["policy"]) == (100, 4, 64, "tova")
    r = run("bench", "-m", smollm2_path, "-p", "0", "-n", "4", "-d", "100", "-r", "1", "--json")
    (full,) = json.loads(r.stdout)
    assert full["kv_size"] >= 104 and full["policy"] == "full"
    r = run("bench", "-m", smollm2_path, "-d", "-1")
    assert r.returncode != 0 and "-d" in r.stderr


@pytest.mark.model
def test_kv_types_on_the_command_line(smollm2_path):
    """--kv-type sets keys and values, -ctk / -ctv (--kv-type-k / --kv-type-v) one each, as
    llama.cpp spells them; the bench reports both, and the same settings in Python give the same
    KV bytes."""
    r = run("bench", "-m", smollm2_path, "-p", "0", "-n", "4", "-r", "1", "--json", "--policy", "tova",
            "--kv-size", "64", "--kv-type", "q4_1", "-ctk", "q8_0")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert (row["type_k"], row["type_v"]) == ("q8_0", "q4_1")
    with tova.Engine(smollm2_path, policy="tova", kv_size=64, kv_type_k="q8_0", kv_type_v="q4_1") as e:
        assert row["kv_bytes"] == e.kv_bytes
    r = run("run", "-m", smollm2_path, "-p", "The capital of France is", "-n", "4", "--temp", "0",
            "--kv-size", "32", "-ctk", "q4_0", "-ctv", "q4_0")
    assert r.returncode == 0 and "Paris" in r.stdout, r.stderr
    r = run("run", "-m", smollm2_path, "-p", "Hi", "-n", "1", "-ctv", "q3_k")
    assert r.returncode != 0 and "unknown --kv-type-v (-ctv) 'q3_k'" in r.stderr
    # K/V in --kv-type (as tova serve and Engine(kv_type=...) take it, and Engine.kv_type reads)
    r = run("bench", "-m", smollm2_path, "-p", "0", "-n", "4", "-r", "1", "--json", "--policy", "tova",
            "--kv-size", "64", "--kv-type", "q8_0/q4_1")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["kv_bytes"] == row["kv_bytes"]
    with tova.Engine(smollm2_path, policy="tova", kv_size=64, kv_type="q8_0/q4_1") as e:
        assert (e.kv_type, e.kv_type_k, e.kv_type_v, e.kv_bytes) == ("q8_0/q4_1", "q8_0", "q4_1", row["kv_bytes"])
    r = run("run", "-m", smollm2_path, "-p", "Hi", "-n", "1", "--kv-type", "q8_0/q3_0/q4_0")
    assert r.returncode == 2 and "--kv-type 'q8_0/q3_0/q4_0' has more than one '/'" in r.stderr, r.stderr


@pytest.mark.model
def test_float_activations_on_the_command_line(smollm2_path):
    """--float-activations: float32 inputs to the matrix products, as Engine(float_activations=True):
    the greedy text equals the Python engine's with that setting."""
    prompt = "The capital of France is"
    r = run("run", "-m", smollm2_path, "-p", prompt, "-n", "12", "--temp", "0", "--ignore-eos", "--float-activations")
    assert r.returncode == 0, r.stderr
    with tova.Engine(smollm2_path, float_activations=True) as e:
        want = e.generate(prompt, max_tokens=12, temperature=0, ignore_eos=True)
    assert want and want in r.stdout, (want, r.stdout)


@pytest.mark.model
def test_kv_tiers_on_the_command_line(smollm2_path):
    """--kv-lo-type / --kv-hi-size: the bench's KV bytes equal the Python engine's, a run works,
    and a tier too large for the cache is refused with the numbers."""
    r = run("bench", "-m", smollm2_path, "-p", "0", "-n", "4", "-r", "1", "--json", "--policy", "tova_ema",
            "--kv-size", "96", "--kv-type", "q8_0", "--kv-lo-type", "q4_0/q4_1", "--kv-hi-size", "16", "--chunk", "16")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert (row["kv_lo_type"], row["kv_hi_size"]) == ("q4_0/q4_1", 16)
    with tova.Engine(smollm2_path, policy="tova_ema", kv_size=96, kv_type="q8_0", kv_lo_type="q4_0/q4_1",
                     kv_hi_size=16, chunk=16) as e:
        assert row["kv_bytes"] == e.kv_bytes
    r = run("run", "-m", smollm2_path, "-p", "The capital of France is", "-n", "4", "--temp", "0",
            "--kv-size", "48", "--chunk", "8", "--kv-lo-type", "q4_0", "--kv-hi-size", "8")
    assert r.returncode == 0 and "Paris" in r.stdout, r.stderr
    r = run("run", "-m", smollm2_path, "-p", "Hi", "-n", "1", "--kv-size", "48", "--kv-lo-type", "q4_0",
            "--kv-hi-size", "40")
    assert r.returncode != 0 and "kv_hi_size 40 + chunk 64" in r.stderr, r.stderr
    # 3-bit values (q3_0) below; as keys they are refused, naming why.
    r = run("run", "-m", smollm2_path, "-p", "The capital of France is", "-n", "4", "--temp", "0", "--kv-type", "q8_0",
            "--kv-size", "48", "--chunk", "8", "--kv-lo-type", "q4_0/q3_0", "--kv-hi-size", "8")
    assert r.returncode == 0 and "Paris" in r.stdout, r.stderr
    r = run("run", "-m", smollm2_path, "-p", "Hi", "-n", "1", "--kv-size", "48", "--kv-lo-type", "q3_0")
    assert r.returncode != 0 and "q3_0 is for values only" in r.stderr, r.stderr


def test_list_and_pull_go_through_the_registry(smollm2_path):
    r = run("list")
    assert r.returncode == 0, r.stderr
    assert "smollm2-135m-instruct" in r.stdout and "gemma-3-270m" in r.stdout
    r = run("pull", "smollm2-135m-instruct")  # cached: verifies and prints the path
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith(".gguf") or "SmolLM2" in (r.stdout + r.stderr)
    r = run("pull", "no-such-model")
    assert r.returncode != 0 and "no-such-model" in r.stderr
    # Usage errors and write errors read as the native commands' do: one line, 2 or 1.
    for args in (("list", "extra"), ("list", "--bogus"), ("pull",)):
        r = run(*args)
        assert r.returncode == 2 and r.stderr.startswith("tova: error: ") and r.stderr.count("\n") == 1, r.stderr
    if os.path.exists("/dev/full"):
        with open("/dev/full", "w") as full:
            r = subprocess.run([str(binary()), "list"], stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
        assert r.returncode == 1 and r.stderr == "tova: write error: No space left on device\n", r.stderr


@pytest.mark.model
def test_out_of_memory_is_an_error_message(smollm2_path, tmp_path):
    """A prompt file larger than the process may allocate (under `ulimit -v`): an error that says
    out of memory and exit 1, not "std::bad_alloc" or a crash."""
    import resource

    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate(400 << 20)  # sparse: 400 MiB of zero bytes to read

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (350 << 20, resource.RLIM_INFINITY))

    r = subprocess.run([str(binary()), "run", "-m", str(smollm2_path), "-f", str(big), "-n", "1", "-t", "1"],
                       capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert r.returncode == 1, r.stderr
    assert "tova: error: out of memory" in r.stderr and "ulimit -v" in r.stderr, r.stderr
