"""The package's modules import each other without cycles, and the job utilities come from one place.

Imports are read from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` of the package, at module level and inside functions (``if TYPE_CHECKING:``
blocks are skipped: they never run). ``from package import name`` is an import of the submodule
``package.name`` when there is one, else of the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import napari_unet

PACKAGE = "napari_unet"
ROOT = Path(napari_unet.__file__).parent

#: the modules split so that block-wise inference has no cycle even through imports inside functions
BLOCK_INFERENCE = {f"{PACKAGE}.jobs"} | {f"{PACKAGE}.inference.{name}" for name in (
    "large", "distributed", "runners", "blockplan", "blocktasks", "blockstores", "predictor")}

#: what napari_unet.jobs holds: nothing in the package imports these from anywhere else
JOB_NAMES = {"Progress", "PredictionCancelled", "StepCancelled", "interruptible", "raise_if_stopped", "run_to_end",
             "relay"}


def _modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, whether it is a package's ``__init__``)."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


MODULES = _modules()


def _absolute(module: str | None, here: str, is_package: bool, level: int) -> str:
    if level == 0:
        return module or ""
    base = here.split(".") if is_package else here.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _owning_module(name: str) -> str | None:
    """The package module ``name`` is, or lies in (``napari_unet.x.y.Thing`` -> ``napari_unet.x.y``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[tuple[str, list[str], bool, int]]:
    """``(imported module, names, at module level, line)`` for each package-internal import of ``module``."""
    path, is_package = MODULES[module]
    found = []

    def visit(node, top: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # never runs
            if isinstance(child, ast.Import):
                found.extend((alias.name, [], top, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                target = _absolute(child.module, module, is_package, child.level)
                for alias in child.names:
                    submodule = f"{target}.{alias.name}"
                    if submodule in MODULES:
                        found.append((submodule, [], top, child.lineno))
                    else:
                        found.append((target, [alias.name], top, child.lineno))
            visit(child, top)

    visit(ast.parse(path.read_text(encoding="utf-8")), True)
    return [(owner, names, top, line) for name, names, top, line in found
            if (owner := _owning_module(name)) is not None and owner != module]


IMPORTS = {module: _imports(module) for module in MODULES}


def _graph(top_level_only: bool) -> dict[str, dict[str, list[int]]]:
    """module -> {imported module: lines}."""
    graph: dict[str, dict[str, list[int]]] = {m: {} for m in MODULES}
    for module, imports in IMPORTS.items():
        for target, _, top, line in imports:
            if top or not top_level_only:
                graph[module].setdefault(target, []).append(line)
    return graph


def _cycles(graph: dict[str, dict[str, list[int]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def _describe(cycles: list[list[str]], graph) -> str:
    lines = []
    for cycle in cycles:
        lines.append(" <-> ".join(cycle))
        lines += [f"    {a} -> {b} (line {', '.join(map(str, sorted(set(graph[a][b]))))})"
                  for a in cycle for b in graph[a] if b in cycle]
    return "\n".join(lines)


def test_the_graph_reader_sees_imports_at_both_levels():
    large = {target: top for target, _, top, _ in IMPORTS[f"{PACKAGE}.inference.large"]}
    assert large[f"{PACKAGE}.inference.blocktasks"] is True
    assert large[f"{PACKAGE}.inference.segment"] is False  # resolve_diameter, imported when a run starts
    assert _cycles({"a": {"b": [1]}, "b": {"c": [1]}, "c": {"a": [1]}, "d": {"a": [1]}}) == [["a", "b", "c"]]


def test_no_import_cycle_at_module_level():
    """Module-level imports of the package form no cycle: any module imports first, on its own."""
    graph = _graph(top_level_only=True)
    cycles = _cycles(graph)
    assert not cycles, "import cycles at module level:\n" + _describe(cycles, graph)


def test_block_wise_inference_has_no_import_cycle_even_inside_functions():
    """The driver, its parts, the file batches and the job utilities import each other one way
    only, also through imports inside functions. (Elsewhere such function-level cycles remain; see
    :func:`function_level_cycles`.)"""
    graph = _graph(top_level_only=False)
    cycles = [c for c in _cycles(graph) if BLOCK_INFERENCE & set(c)]
    assert not cycles, "import cycles through block-wise inference:\n" + _describe(cycles, graph)


def function_level_cycles() -> str:
    """The cycles of the whole graph, imports inside functions included, described (for a report)."""
    graph = _graph(top_level_only=False)
    return _describe(_cycles(graph), graph)


def test_jobs_imports_nothing_of_the_package():
    """Inference and training both lean on napari_unet.jobs; it leans on neither."""
    assert IMPORTS[f"{PACKAGE}.jobs"] == []


def test_job_utilities_are_imported_from_the_jobs_module():
    """One of each: the package imports the job utilities from napari_unet.jobs, never through the
    modules that re-export them for older code (the predictor)."""
    elsewhere = [f"{module}:{line} imports {', '.join(sorted(JOB_NAMES & set(names)))} from {target}"
                 for module, imports in IMPORTS.items() for target, names, _, line in imports
                 if JOB_NAMES & set(names) and target != f"{PACKAGE}.jobs"]
    assert not elsewhere, "\n".join(elsewhere)
