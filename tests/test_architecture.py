"""The architecture rules of docs/architecture.md, checked on the source of fetalhc/.

- Who may import whom: every import statement (at any depth, relative ones resolved) of a
  top-level part (``fetalhc.<part>``) names only the parts of ``ALLOWED``; nothing imports
  ``cli``.
- No import cycle between fetalhc modules (see ``import_graph``).
- No private name crosses a top-level part (see ``test_no_private_imports_across_parts``).
- Keras' private graph attributes are read in ``fetalhc/models/graph.py`` only.
- Module size: at most ``MAX_LINES`` lines; over ``EXPLAIN_OVER`` lines the module docstring
  says why the module is one job.
- Nothing pins work to a device.

Every failure message names the offending modules and lines.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fetalhc"

# the foundation: imports no fetalhc module, every part may import it
FOUNDATION = {"files"}
# top-level part of fetalhc -> the other parts it may import (besides FOUNDATION)
ALLOWED: dict[str, set[str]] = {
    "files": set(),
    "data": set(),
    "startup": set(),
    "viz": set(),
    # models, losses and metrics are one layer (docs/architecture.md): the prediction
    # helpers of models score in mm with metrics
    "models": {"data", "losses", "metrics"},
    "losses": {"data"},
    "metrics": {"data"},
    "training": {"data", "models", "losses", "metrics"},
    "explain": {"models", "losses", "metrics", "data"},
    "evaluate": {"explain", "models", "losses", "metrics", "data"},
    "callbacks": {"explain", "evaluate", "viz", "models", "losses", "metrics", "data"},
    "report": {"explain", "evaluate", "viz", "models", "losses", "metrics", "data"},
    "cli": {"data", "viz", "models", "losses", "metrics", "training", "explain", "evaluate",
            "callbacks", "report", "startup"},
}
# `explain` may use `models` at most: `models` may itself use `data`, hence `data` above.
for _part, _allowed in ALLOWED.items():
    if _part not in FOUNDATION:
        _allowed |= FOUNDATION

# Keras' private graph attributes: read by fetalhc/models/graph.py and nowhere else
KERAS_INTERNALS = ("_keras_history", "_nodes_by_depth", "_flatten_layers", "_inbound_nodes",
                   "_outbound_nodes")
KERAS_INTERNALS_MODULE = Path("models") / "graph.py"

MAX_LINES = 600
EXPLAIN_OVER = 400
ONE_JOB = re.compile(r"\bone\s+job\b", re.IGNORECASE)

MODULES = sorted(PACKAGE.rglob("*.py"))


# ----------------------------------------------------------------------------- parsing ---
def module_name(path: Path) -> str:
    """fetalhc/x/y.py -> fetalhc.x.y; fetalhc/x/__init__.py -> fetalhc.x."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


MODULE_NAMES = {module_name(path): path for path in MODULES}


def _part_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    if relative == Path("__init__.py"):
        return "__init__"
    return relative.parts[0].removesuffix(".py")


def _part_of_module(name: str) -> str:
    """fetalhc.x.y -> x; the package root -> __init__."""
    pieces = name.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@dataclass(frozen=True)
class Import:
    """One imported fetalhc module (or one name from it) of one import statement."""

    line: int
    module: str        # the fetalhc module the statement loads (resolved, known or not)
    name: str | None   # `from module import name`: the name when it is not a submodule
    alias: str | None  # the local name bound to `module` when it is bound to a module


def _resolve_from(path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module_name(path).split(".")
    if not _is_package(path):
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def fetalhc_imports(path: Path, tree: ast.AST | None = None) -> list[Import]:
    """Every fetalhc import of ``path``, at any depth of the file (function-local and
    ``TYPE_CHECKING`` imports too), relative imports resolved.

    ``import fetalhc.a.b [as c]`` loads ``fetalhc.a.b``; ``from fetalhc.a import n`` loads
    the submodule ``fetalhc.a.n`` when there is one, else ``fetalhc.a`` (with name ``n``).
    """
    tree = tree if tree is not None else ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "fetalhc":
                    bound = alias.asname  # `import fetalhc.a.b` binds `fetalhc`
                    found.append(Import(node.lineno, alias.name, None, bound))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(path, node)
            if base.split(".")[0] != "fetalhc":
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in MODULE_NAMES:
                    found.append(Import(node.lineno, submodule, None, alias.asname or alias.name))
                else:
                    found.append(Import(node.lineno, base, alias.name, None))
    return found


PARSED = {path: ast.parse(path.read_text(), filename=str(path)) for path in MODULES}
IMPORTS = {path: fetalhc_imports(path, PARSED[path]) for path in MODULES}


def _location(path: Path, line: int | None = None) -> str:
    where = str(path.relative_to(PACKAGE.parent))
    return f"{where}:{line}" if line is not None else where


# --------------------------------------------------------------------- who imports whom ---
@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_follow_the_data_flow(path):
    part = _part_of(path)
    if part == "__init__":
        return  # the package root only wires public names
    allowed = ALLOWED.get(part)
    if allowed is None:
        pytest.fail(f"fetalhc/{part} is not in the architecture table of tests/test_architecture.py")
    offending = []
    for item in IMPORTS[path]:
        if item.module == "fetalhc":
            if item.name is None:
                continue  # a bare `import fetalhc` (e.g. for __version__) wires nothing
            imported = item.name  # `from fetalhc import name` counts as part `name`
        else:
            imported = _part_of_module(item.module)
        if imported != part and imported not in allowed:
            offending.append(f"{_location(path, item.line)} imports {item.module}"
                             + (f" ({item.name})" if item.name else ""))
    assert not offending, (f"fetalhc/{part} may import only {sorted(allowed)}:\n"
                           + "\n".join(offending))


def test_nothing_imports_cli():
    offending = [
        f"{_location(path, item.line)} imports {item.module}"
        for path in MODULES if _part_of(path) != "cli"
        for item in IMPORTS[path] if _part_of_module(item.module) == "cli"
    ]
    assert not offending, "\n".join(offending)


def test_start_up_module_is_used_by_the_root_and_the_command_line_only():
    """``fetalhc.startup`` decides before TensorFlow is imported (docs/architecture.md,
    "Start-up"): the package root and ``cli`` use it, no library module does; and nothing in
    the package imports the console entry ``fetalhc_console`` (it is read by name)."""
    offending = [
        f"{_location(path, item.line)} imports {item.module}"
        for path in MODULES if _part_of(path) not in ("__init__", "cli", "startup")
        for item in IMPORTS[path]
        if _part_of_module(item.module) == "startup" or item.module == "fetalhc_console"
        or (item.module == "fetalhc" and item.name == "startup")
    ]
    assert not offending, "\n".join(offending)
    console = PACKAGE.parent / "fetalhc_console.py"
    top_level = [node for node in ast.parse(console.read_text()).body
                 if isinstance(node, (ast.Import, ast.ImportFrom))]
    fetalhc_at_top = [ast.unparse(node) for node in top_level
                      if any(alias.name.startswith("fetalhc") for alias in node.names)
                      or (isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                          "fetalhc"))]
    assert not fetalhc_at_top, f"fetalhc_console.py imports the package at import: {fetalhc_at_top}"


def test_the_table_covers_every_part():
    parts = {_part_of(path) for path in MODULES} - {"__init__"}
    assert parts <= set(ALLOWED), f"parts missing from ALLOWED: {sorted(parts - set(ALLOWED))}"
    for foundation in FOUNDATION:
        assert not ALLOWED[foundation], f"fetalhc.{foundation} is the foundation: imports nothing"


def test_imports_are_found_at_any_depth_and_resolved():
    source = """
from . import gradient
from .registry import register as reg
from ..models import graph, nope
import fetalhc.files as files
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from fetalhc.data.index import DataError
def later():
    import fetalhc.viz.overlay
"""
    found = fetalhc_imports(PACKAGE / "explain" / "example.py", ast.parse(source))
    assert [(item.module, item.name, item.alias) for item in found] == [
        ("fetalhc.explain.gradient", None, "gradient"),
        ("fetalhc.explain.registry", "register", None),
        ("fetalhc.models.graph", None, "graph"),
        ("fetalhc.models", "nope", None),
        ("fetalhc.files", None, "files"),
        ("fetalhc.data.index", "DataError", None),
        ("fetalhc.viz.overlay", None, None),
    ]


# ------------------------------------------------------------------------------ cycles ---
def import_graph() -> dict[str, dict[str, list[str]]]:
    """module -> {imported module -> ["path:line", ...]} over fetalhc/.

    One edge A -> B for every import of B in A (see ``fetalhc_imports``); an import of a
    name that is no module (``import fetalhc.a.nope``) goes to its longest known prefix.
    Not edges: a package's ``__init__.py`` importing a module of its own subtree (that is
    the package re-exporting its submodules), and a module importing itself.
    """
    graph: dict[str, dict[str, list[str]]] = {name: {} for name in MODULE_NAMES}
    for path in MODULES:
        source = module_name(path)
        for item in IMPORTS[path]:
            target = item.module
            while target not in MODULE_NAMES and "." in target:
                target = target.rsplit(".", 1)[0]
            if target == source or target not in MODULE_NAMES:
                continue
            if _is_package(path) and target.startswith(source + "."):
                continue
            locations = graph[source].setdefault(target, [])
            if _location(path, item.line) not in locations:
                locations.append(_location(path, item.line))
    return graph


def strongly_connected_components(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components in no particular order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = counter
                    counter += 1
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b": []}, "b": {"c": []}, "c": {"a": [], "d": []}, "d": {}, "e": {"e": []}}
    assert sorted(strongly_connected_components(graph)) == [["a", "b", "c"], ["d"], ["e"]]


def test_no_import_cycle_between_modules():
    graph = import_graph()
    cycles = [component for component in strongly_connected_components(graph)
              if len(component) > 1]
    report = []
    for component in sorted(cycles):
        report.append("cycle: " + ", ".join(component))
        for source in component:
            for target in sorted(set(graph[source]) & set(component)):
                report.append(f"    {source} -> {target} ({', '.join(graph[source][target])})")
    assert not cycles, "import cycles between fetalhc modules:\n" + "\n".join(report)


# ------------------------------------------------------------------- private imports ---
def _private_uses(path: Path) -> list[tuple[int, str, str]]:
    """(line, what, owner module) for every private name ``path`` takes from a fetalhc
    module: a private module in an import path, a private imported name, or an attribute
    ``alias._name`` of a module bound by an import."""
    uses = []
    aliases: dict[str, str] = {}
    for item in IMPORTS[path]:
        pieces = item.module.split(".")
        for depth, piece in enumerate(pieces[1:], start=2):
            if _is_private(piece):
                uses.append((item.line, item.module, ".".join(pieces[:depth])))
                break
        if item.name is not None and _is_private(item.name):
            uses.append((item.line, f"{item.module}.{item.name}", item.module))
        if item.alias is not None:
            aliases[item.alias] = item.module
    for node in ast.walk(PARSED[path]):
        if (isinstance(node, ast.Attribute) and _is_private(node.attr)
                and isinstance(node.value, ast.Name) and node.value.id in aliases):
            owner = aliases[node.value.id]
            uses.append((node.lineno, f"{owner}.{node.attr}", owner))
    return uses


def test_no_private_imports_across_parts():
    """A private name (one leading underscore, not a dunder) of a fetalhc module is used
    only inside its own top-level part.

    The part of a module is the first component after ``fetalhc`` (``explain``, ``cli``,
    ``files``, ``startup``, ...). A module uses a private name when it imports a module
    whose dotted path has a private component (``fetalhc.cli._files``), imports a private
    name (``from fetalhc.training.run import _backup_epoch``), or reads ``alias._name`` of
    a module bound by an import (``from fetalhc.evaluate import suite; suite._mean``). The
    owner is the module holding the private component or name; the use is allowed when the
    user's part is the owner's part, and for the package root ``fetalhc/__init__.py``
    importing a private top-level module of the package (``fetalhc._name``).
    """
    offending = []
    for path in MODULES:
        part = _part_of(path)
        for line, what, owner in _private_uses(path):
            owner_part = _part_of_module(owner)
            if owner_part == part:
                continue
            if part == "__init__" and owner.count(".") == 1 and _is_private(owner_part):
                continue  # the root wires its private top-level modules
            offending.append(f"{_location(path, line)} (part {part}) uses {what} "
                             f"(private to fetalhc.{owner_part})")
    assert not offending, "private names used across parts:\n" + "\n".join(sorted(offending))


# ------------------------------------------------------------------- Keras internals ---
def test_keras_internals_only_in_the_graph_module():
    pattern = re.compile("|".join(KERAS_INTERNALS))
    offending = [
        f"{_location(path, number)}: {match}"
        for path in MODULES if path.relative_to(PACKAGE) != KERAS_INTERNALS_MODULE
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        for match in sorted(set(pattern.findall(line)))
    ]
    assert not offending, (f"Keras graph internals outside fetalhc/{KERAS_INTERNALS_MODULE}:\n"
                           + "\n".join(offending))


# -------------------------------------------------------------------------- module size ---
def test_modules_are_small_or_say_why_they_are_one_job():
    too_long, unexplained = [], []
    for path in MODULES:
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            too_long.append(f"{_location(path)}: {lines} lines")
        elif lines > EXPLAIN_OVER:
            docstring = ast.get_docstring(PARSED[path]) or ""
            if not ONE_JOB.search(docstring):
                unexplained.append(f"{_location(path)}: {lines} lines")
    message = []
    if too_long:
        message += [f"modules over {MAX_LINES} lines (split them):", *too_long]
    if unexplained:
        message += [f"modules over {EXPLAIN_OVER} lines whose module docstring does not say "
                    "why they are 'one job':", *unexplained]
    assert not message, "\n".join(message)


# ------------------------------------------------------------------------------ devices ---
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
