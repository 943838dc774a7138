"""The public API is typed: users' code type-checks, their mistakes are caught, and the package
agrees with the stubs of its compiled module. mypy runs over the installed package (with the
``_core.pyi`` generated at install time), copied apart so that only it is checked."""
from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tova
from tova.sampling import SamplingFields

HERE = Path(__file__).resolve().parent / "typing"


def test_sampling_fields_are_the_sampling_params():
    """The keywords type checkers accept for ``**fields`` are exactly the SamplingParams fields,
    with the same types."""
    params = {f.name: f.type for f in dataclasses.fields(tova.SamplingParams)}
    assert SamplingFields.__annotations__.keys() == params.keys()
    for name, kind in SamplingFields.__annotations__.items():
        assert getattr(kind, "__forward_arg__", kind) == params[name], name


def test_misspelt_keywords_are_named_with_their_spelling(smollm2_path):
    with tova.Engine(smollm2_path, n_threads=1, kv_size=16) as e:
        with pytest.raises(TypeError, match="unknown generate\\(\\) keyword argument\\(s\\) max_token; did you mean max_tokens\\?"):
            e.generate("Hi", max_token=3)
    with pytest.raises(TypeError, match="did you mean temperature\\?"):
        tova.SamplingParams().replace(temprature=0.1)
    with pytest.raises(TypeError, match="did you mean seed\\?"):
        tova.SamplingParams.greedy(seeed=1)


def test_public_names():
    public = set(dir(tova))
    assert {"chat", "models", "perplexity", "Engine", "PolicyView", "SamplingFields"} <= public
    assert not {"Any", "importlib", "List"} & public
    for name in tova.__all__:
        assert getattr(tova, name) is not None
    for exc in (tova.TovaError, tova.GGUFError):
        assert exc.__doc__ and len(exc.__doc__) > 40


@pytest.fixture(scope="module")
def mypy_run(tmp_path_factory):
    pytest.importorskip("mypy", reason="mypy is in the [test] extra")
    root = tmp_path_factory.mktemp("typing")
    package = root / "package"  # the installed package's copy, checked as sources
    shutil.copytree(Path(tova.__file__).parent, package / "tova",
                    ignore=shutil.ignore_patterns("__pycache__", "bin", "include"))
    assert (package / "tova" / "_core.pyi").is_file(), "the install did not generate _core.pyi"
    users = root / "users"  # users' files, against the package as installed
    shutil.copytree(HERE, users, ignore=shutil.ignore_patterns("__pycache__"))

    def run(where: Path, *args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(where / ".cache"),
                            "--ignore-missing-imports", "--no-error-summary",
                            "--show-error-codes", *args],
                           cwd=where, capture_output=True, text=True, timeout=600)
        return r.stdout + r.stderr if r.returncode != 0 else ""
    return lambda *args: run(package, *args), lambda *args: run(users, *args)


def test_the_package_type_checks_against_its_stubs(mypy_run):
    check_package, _ = mypy_run
    assert check_package("-p", "tova") == ""


def test_correct_use_type_checks_strictly(mypy_run):
    _, check_users = mypy_run
    assert check_users("--strict", "user_code.py") == ""


def test_mistakes_are_caught(mypy_run):
    """Every line of misuse.py is an error mypy reports (as the line's ``type: ignore`` says);
    one no longer caught is an unused ignore."""
    _, check_users = mypy_run
    assert check_users("--strict", "--warn-unused-ignores", "misuse.py") == ""


def test_settings_are_the_ones_in_effect_and_read_only(smollm2_path):
    with tova.Engine(smollm2_path, policy="sink", kv_size=16, n_threads=1) as e:
        assert e.n_sink == 4 and e.n_threads == 1 and e.kv_size == 16 and e.float_activations is False
        with pytest.raises(AttributeError, match="Engine.n_ctx is a setting the engine was made with"):
            e.n_ctx = 4  # type: ignore[misc]
        assert e.n_ctx == 2048
        with pytest.raises(AttributeError, match="read-only"):
            del e.policy  # (before, deleting let a later assignment change what the checks read)
        assert e.policy == "sink"
        for name in ("temperature", "seed", "max_tokens"):  # (llama-cpp-python habits)
            with pytest.raises(AttributeError, match=f"Engine.{name}: sampling settings are given per call"):
                setattr(e, name, 0)
        e.user_note = "mine"  # other attributes are the user's
        import copy
        import pickle
        for clone in (copy.copy, copy.deepcopy, pickle.dumps):
            with pytest.raises(TypeError, match="a tova.Engine cannot be pickled or copied"):
                clone(e)
    with pytest.raises(tova.TovaError, match="this Engine was closed"):
        e.generate("hi")
    with tova.Engine(smollm2_path, kv_size=16, n_threads=1) as e:
        assert e.n_sink == 0
