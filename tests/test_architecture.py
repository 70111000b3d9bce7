"""The import rule of docs/architecture.md, checked on every import statement in fetalhc/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fetalhc"

# top-level part of fetalhc -> the other parts it may import
ALLOWED: dict[str, set[str]] = {
    "data": set(),
    "_startup": set(),
    "viz": set(),
    "models": {"data"},
    "losses": {"data"},
    "metrics": {"data"},
    "training": {"data", "models", "losses", "metrics"},
    "explain": {"models", "losses", "metrics", "data"},
    "evaluate": {"explain", "models", "losses", "metrics", "data"},
    "callbacks": {"explain", "evaluate", "viz", "models", "losses", "metrics", "data"},
    "cli": {"data", "viz", "models", "losses", "metrics", "training", "explain", "evaluate",
            "callbacks"},
}
# `explain` may use `models` at most: `models` may itself use `data`, hence `data` above.


def _part_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    if relative == Path("__init__.py"):
        return "__init__"
    return relative.parts[0].removesuffix(".py")


def _imported_parts(tree: ast.AST) -> set[str]:
    parts = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "fetalhc":
                names = [f"fetalhc.{alias.name}" for alias in node.names]
        for name in names:
            pieces = name.split(".")
            if pieces[0] == "fetalhc" and len(pieces) > 1:
                parts.add(pieces[1])
    return parts


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_follow_the_data_flow(path):
    part = _part_of(path)
    if part == "__init__":
        return  # the package root only wires public names
    imported = _imported_parts(ast.parse(path.read_text(), filename=str(path))) - {part}
    allowed = ALLOWED.get(part)
    if allowed is None:
        pytest.fail(f"fetalhc/{part} is not in the architecture table of tests/test_architecture.py")
    forbidden = imported - allowed
    assert not forbidden, f"{path.relative_to(PACKAGE)} imports fetalhc.{sorted(forbidden)}"


def test_nothing_imports_cli():
    for path in MODULES:
        if _part_of(path) == "cli":
            continue
        assert "cli" not in _imported_parts(ast.parse(path.read_text())), path


def test_nothing_pins_work_to_a_device():
    """GPU readiness: no fetalhc module places ops on a device or hides the GPUs, so
    TensorFlow uses a GPU whenever one is visible (docs/training.md, "GPU")."""
    pinned = re.compile(r"tf\.device\(|/cpu:|/CPU:|CUDA_VISIBLE_DEVICES|set_visible_devices")
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{number}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if pinned.search(line)
    ]
    assert offenders == []
