"""Packaging: the wheel holds everything ``fetalhc`` needs, so ``fetalhc demo`` runs from an
installed wheel in an empty folder, with nothing from the source tree.

The wheel is built offline (``pip wheel --no-deps --no-build-isolation --no-index``) from a
copy of what the build reads, so the checkout gets no ``build/`` folder and no stale file
can slip in. It is installed with ``--no-deps`` into a fresh venv that sees this
interpreter's site-packages (TensorFlow, Keras, ...) through a ``.pth`` line; that line adds
the folder to ``sys.path`` without running its ``.pth`` files, so the checkout's editable
install stays out, and ``--ignore-installed`` leaves this environment's own fetalhc alone.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# what setup.cfg / pyproject.toml build the wheel from
BUILD_INPUTS = ("fetalhc", "fetalhc_console.py", "setup.cfg", "pyproject.toml", "README.md")
SHIPPED = ["hc18_backbone_cpu", "hc18_best", "hc18_cpu", "hc18_crop", "hc18_residual",
           "paper_accuracy", "paper_explain", "quick_cpu"]
# the shortest demo the command accepts that still runs every step
DEMO = ["demo", "--n", "30", "--epochs", "1", "--image-size", "32", "--explain-images", "1",
        "--evaluate-images", "2", "--methods", "gradient,integrated_gradients",
        "--no-progress"]


def _run(arguments, cwd, timeout=600, env=None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in arguments], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(map(str, arguments))} failed ({result.returncode}):\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def _clean_env() -> dict:
    """This environment minus anything that would put the checkout on ``sys.path``."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", MPLBACKEND="Agg", PYTHONNOUSERSITE="1")
    return env


def _build_wheel(tmp_path: Path) -> Path:
    pytest.importorskip("setuptools", reason="building without isolation needs setuptools")
    pytest.importorskip("wheel", reason="building without isolation needs wheel")
    source = tmp_path / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "--quiet", "-w", wheels, source], cwd=tmp_path, env=_clean_env())
    (wheel,) = wheels.glob("fetalhc-*.whl")
    return wheel


def _make_venv(tmp_path: Path) -> tuple[Path, Path]:
    """A venv (``--system-site-packages``) that also sees this interpreter's site-packages;
    returns its python and its site-packages folder."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv],
         cwd=tmp_path, env=_clean_env())
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                                       "['purelib'])"], cwd=tmp_path,
                        env=_clean_env()).stdout.strip())
    (purelib / "fetalhc-test-environment.pth").write_text(
        "".join(f"{folder}\n" for folder in site.getsitepackages()))
    return python, purelib


def test_wheel_runs_the_demo_in_an_empty_folder(tmp_path):
    started = time.perf_counter()
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {f"fetalhc/configs/{name}.toml" for name in SHIPPED} <= names
    assert {"fetalhc_console.py", "fetalhc/report/data/paper_aopc.json"} <= names
    assert not any(name.startswith(("tests/", "configs/", "scripts/", "docs/"))
                   for name in names)

    python, purelib = _make_venv(tmp_path)
    env = _clean_env()
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
          "--quiet", wheel], cwd=tmp_path, env=env)

    work = tmp_path / "empty"  # the user's folder: nothing of the checkout in it
    work.mkdir()
    where = _run([python, "-c", "import fetalhc, fetalhc_console\n"
                                "from fetalhc.training.config import CONFIGS_FOLDER, "
                                "shipped_configs\n"
                                "print(fetalhc.__file__, fetalhc_console.__file__, "
                                "CONFIGS_FOLDER, ','.join(shipped_configs()), sep='\\n')"],
                 cwd=work, env=env).stdout.splitlines()
    package, console, configs, shipped = where[-4:]
    for path in (package, console, configs):
        assert Path(path).is_relative_to(purelib), path
        assert not Path(path).resolve().is_relative_to(REPO), path
    assert shipped.split(",") == SHIPPED

    script = python.parent / ("fetalhc.exe" if os.name == "nt" else "fetalhc")
    demo_started = time.perf_counter()
    result = _run([script, *DEMO], cwd=work, env=env, timeout=1200)
    demo_seconds = time.perf_counter() - demo_started
    out = work / "runs" / "demo"  # the demo's default --out, relative to the user's folder
    assert f"report: {Path('runs') / 'demo' / 'report.md'}" in result.stdout
    for name in ("report.md", "run/model.keras", "run/metrics.json",
                 "predict/predictions.csv", "evaluate/summary.csv", "explain/grid.png"):
        assert (out / name).is_file(), f"the demo wrote no {name}"
    assert "fetalhc train --config quick_cpu" in (out / "report.md").read_text()
    assert sorted(path.name for path in work.iterdir()) == ["runs"]  # nothing else written
    print(f"wheel built, installed and its demo run in {time.perf_counter() - started:.0f} s "
          f"(demo {demo_seconds:.0f} s)")
