"""Start-up of the command line and of ``import fetalhc`` (docs/architecture.md, "Start-up").

- The console script answers ``--version``, ``--help``, every ``<command> --help`` and shell
  completion without importing TensorFlow.
- ``import fetalhc`` still registers every fetalhc Keras object: ``keras.models.load_model``
  of a fetalhc model works right after it (and fails without it).
- The command line keeps TensorFlow's CUDA probing out of a CPU user's terminal.
- Errors: a mistake in the input is one line and exit 1; a bug (e.g. a KeyError) shows its
  traceback; ``--debug`` shows the traceback of input errors too.

Each case runs in a fresh interpreter (``sys.executable``): the test process itself has
imported TensorFlow long ago.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import fetalhc.cli.main as cli_main
from fetalhc.cli.options import Command

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_MODEL = ROOT / "tests" / "fixtures" / "run_c5c3278" / "run" / "model.keras"
CONSOLE_SCRIPT = Path(sys.executable).parent / "fetalhc"


def run_python(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=300)


# Runs the console entry (fetalhc_console.main, what the installed script calls) in-process
# and reports which heavy modules it imported.
ENTRY = """
import sys, fetalhc_console
code = fetalhc_console.main(sys.argv[1:])
heavy = sorted(name for name in ("tensorflow", "keras") if name in sys.modules)
print("IMPORTED:" + ",".join(heavy), "CODE:" + str(code), file=sys.stderr)
"""


def imported_heavy(result: subprocess.CompletedProcess) -> str:
    line = [text for text in result.stderr.splitlines() if text.startswith("IMPORTED:")]
    assert line, f"no report from the entry; stderr:\n{result.stderr[-2000:]}"
    return line[-1].split()[0].removeprefix("IMPORTED:")


@pytest.mark.parametrize("argv", [
    ["--version"], ["--help"], ["data", "--help"], ["data", "check", "--help"],
    ["data", "synth", "--help"], ["train", "--help"], ["predict", "--help"],
    ["explain", "--help"], ["evaluate", "--help"], ["demo", "--help"], ["merge", "--help"],
    ["study", "--help"], ["benchmark", "--help"],
], ids=lambda argv: " ".join(argv))
def test_answers_without_importing_tensorflow(argv):
    result = run_python(ENTRY, *argv)
    assert "CODE:0" in result.stderr, result.stderr[-2000:]
    assert imported_heavy(result) == "", (
        f"`fetalhc {' '.join(argv)}` imported {imported_heavy(result)}")


# what a command module may import at its top: TensorFlow-free modules only (the work is
# imported inside the callback)
TENSORFLOW_FREE = {"click", "__future__", "fetalhc.cli.options", "fetalhc.evaluate.settings",
                   "fetalhc.training.config"}


@pytest.mark.parametrize("module", sorted(cli_main.COMMAND_MODULES.values()))
def test_command_modules_import_only_tensorflow_free_modules_at_the_top(module):
    path = ROOT / (module.replace(".", "/") + ".py")
    offending = []
    for node in ast.parse(path.read_text()).body:
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) else [])
        offending += [f"line {node.lineno}: {name}" for name in names
                      if name not in TENSORFLOW_FREE
                      and name.split(".")[0] not in sys.stdlib_module_names]
    assert not offending, f"{module} imports at its top:\n" + "\n".join(offending)


def test_the_tensorflow_free_modules_are_free_of_tensorflow_and_numpy():
    modules = sorted(TENSORFLOW_FREE - {"click", "__future__"})
    code = ("import sys, importlib, fetalhc_console\n"
            "fetalhc_console.COMMAND_LINE = True\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "from fetalhc.evaluate import EvaluationSettings\n"
            "EvaluationSettings().validate((1, 32, 32, 1))\n"
            "print('HEAVY', sorted(m for m in ('tensorflow', 'keras', 'numpy') if m in sys.modules))\n")
    result = run_python(code)
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr[-2000:]


def test_version_of_the_installed_script_imports_no_tensorflow():
    if not CONSOLE_SCRIPT.is_file():
        pytest.skip(f"no console script at {CONSOLE_SCRIPT} (package not installed)")
    result = subprocess.run([sys.executable, "-X", "importtime", str(CONSOLE_SCRIPT),
                             "--version"], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fetalhc, version" in result.stdout
    imported = [line for line in result.stderr.splitlines()
                if line.startswith("import time:") and
                line.rsplit("|", 1)[-1].strip() in ("tensorflow", "keras")]
    assert not imported, "the console script imported:\n" + "\n".join(imported)


def test_completion_imports_no_tensorflow():
    env = {"_FETALHC_COMPLETE": "bash_complete", "COMP_WORDS": "fetalhc evaluate --pertur",
           "COMP_CWORD": "2"}
    result = run_python(ENTRY, env=env)
    assert "--perturbation" in result.stdout, result.stdout + result.stderr[-2000:]
    assert imported_heavy(result) == ""


LOAD = """
import sys, keras
{prelude}
model = keras.models.load_model(sys.argv[1])
print("LOADED", [layer.__class__.__name__ for layer in model.layers][-1])
"""


def test_import_fetalhc_registers_keras_objects_for_load_model():
    loaded = run_python(LOAD.format(prelude="import fetalhc"), str(FIXTURE_MODEL))
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert "LOADED" in loaded.stdout
    # the same file needs fetalhc's registrations: without the import it cannot load
    bare = run_python(LOAD.format(prelude=""), str(FIXTURE_MODEL))
    assert bare.returncode != 0 and "OutputAffine" in bare.stderr, bare.stderr[-2000:]


def test_command_line_loads_models_although_registration_was_deferred():
    code = """
import sys, fetalhc_console
fetalhc_console.COMMAND_LINE = True
import fetalhc
assert "keras" not in sys.modules, "the root registered at import in the command line"
model = fetalhc.load_model(sys.argv[1])
print("LOADED", len(model.layers))
"""
    result = run_python(code, str(FIXTURE_MODEL))
    assert result.returncode == 0 and "LOADED" in result.stdout, result.stderr[-2000:]


def test_command_line_hides_tensorflow_cuda_probing():
    code = """
import sys, fetalhc_console
fetalhc_console.COMMAND_LINE = True
from fetalhc.startup import prepare_tensorflow
prepare_tensorflow()
import fetalhc, numpy as np
model = fetalhc.load_model(sys.argv[1])
model.predict(np.zeros((1, *model.inputs[0].shape[1:]), "float32"), verbose=0)
print("PREDICTED")
"""
    env = {"TF_CPP_MIN_LOG_LEVEL": "0"}
    result = run_python(code, str(FIXTURE_MODEL), env=env)
    assert "PREDICTED" in result.stdout, result.stderr[-2000:]
    noisy = [line for line in result.stderr.splitlines()
             if "cuInit" in line or "cuda" in line.lower() or "oneDNN" in line]
    assert not noisy, "TensorFlow start-up noise reached the terminal:\n" + "\n".join(noisy)


# ----------------------------------------------------------------------------- errors ---
def _boom(error: Exception) -> click.Command:
    def callback():
        raise error

    return Command("boom", callback=callback, needs_tensorflow=False)


@pytest.fixture
def boom(monkeypatch):
    """``fetalhc boom`` raises the exception the test sets."""
    holder = {}
    original = cli_main.LazyGroup.get_command

    def get_command(self, ctx, name):
        return _boom(holder["error"]) if name == "boom" else original(self, ctx, name)

    monkeypatch.setattr(cli_main.LazyGroup, "get_command", get_command)
    return holder


def test_input_error_is_one_line_and_exit_1(boom):
    boom["error"] = ValueError("--grid 0 must be >= 1")
    result = CliRunner().invoke(cli_main.cli, ["boom"])
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: --grid 0 must be >= 1"
    assert "Traceback" not in result.output


@pytest.mark.parametrize("argv", [["--debug", "boom"], ["boom", "--debug"]])
def test_debug_shows_the_traceback_of_input_errors(boom, argv):
    boom["error"] = ValueError("bad input")
    result = CliRunner().invoke(cli_main.cli, argv)
    assert result.exit_code == 1
    assert isinstance(result.exception, ValueError)  # not turned into one line


def test_key_error_inside_a_command_is_a_bug_with_its_traceback(boom):
    boom["error"] = KeyError("column")
    result = CliRunner().invoke(cli_main.cli, ["boom"])
    assert result.exit_code == 1
    assert isinstance(result.exception, KeyError)
    assert "Error: column" not in result.output


def test_key_error_traceback_reaches_the_terminal():
    code = """
import click, fetalhc_console
fetalhc_console.COMMAND_LINE = True
import fetalhc.cli.main as cli_main
from fetalhc.cli.options import Command
def boom():
    raise KeyError("column")
cli_main.LazyGroup.get_command = lambda self, ctx, name: Command(
    "boom", callback=boom, needs_tensorflow=False)
raise SystemExit(cli_main.main(["boom"]))
"""
    result = run_python(code)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "KeyError: 'column'" in result.stderr
