"""Dependencies point one way: cli -> pipelines (predict, evaluate, train) -> stages -> models / data, and no
module of rrsis_cli imports itself back through others; inside the predict package, imports follow its flow
(options -> records -> ... -> driver). The graph is read from the source (every import statement, at module level
or inside a function, under TYPE_CHECKING too), not from what a run happens to import.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rrsis_cli"
PIPELINES = ("rrsis_cli.predict", "rrsis_cli.evaluate", "rrsis_cli.train")
STAGES = ("rrsis_cli.inference", "rrsis_cli.scene", "rrsis_cli.tiling", "rrsis_cli.blend", "rrsis_cli.pipeline",
          "rrsis_cli.grounding", "rrsis_cli.outputs", "rrsis_cli.vectors", "rrsis_cli.vector_worker",
          "rrsis_cli.geojson_text",
          "rrsis_cli.inputs", "rrsis_cli.preflight", "rrsis_cli.store",
          "rrsis_cli.publish")
# Cycles that a change under way removes, with the reason they are still here. The test fails on any other
# cycle, and on a listed one that is gone, so that the list only shrinks.
KNOWN_CYCLES: dict[frozenset[str], str] = {}
# The modules of the predict package in the order of its flow: each imports only modules before it, never the
# package itself (whose __init__ imports them all).
PREDICT = "rrsis_cli.predict"
PREDICT_ORDER = ("options", "records", "finished", "coarse", "tiles", "write", "runner", "plan", "local", "tasks",
                 "driver")


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = (root.name, *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """The rrsis_cli modules ``path`` imports: ``from a.b import c`` is ``a.b.c`` when that is a module, else
    ``a.b``; relative imports are resolved against ``name``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                         for alias in node.names)
    return {m for m in found if m in modules and m != name}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    paths = {module_name(p, root): p for p in root.rglob("*.py")}
    return {name: imports_of(path, name, set(paths)) for name, path in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan), each a set of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = {stack.pop()}
            while node not in component:
                component.add(stack.pop())
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_graph_reader_sees_function_level_and_relative_imports(tmp_path):
    package = tmp_path / "rrsis_cli"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from rrsis_cli.sub import b\n")
    (package / "sub" / "__init__.py").write_text("from . import b\n")
    (package / "sub" / "b.py").write_text("from ..a import f\nimport rrsis_cli.sub\n")
    graph = import_graph(package)
    assert graph == {"rrsis_cli": set(), "rrsis_cli.a": {"rrsis_cli.sub.b"}, "rrsis_cli.sub": {"rrsis_cli.sub.b"},
                     "rrsis_cli.sub.b": {"rrsis_cli.a", "rrsis_cli.sub"}}
    assert cycles(graph) == [frozenset({"rrsis_cli.a", "rrsis_cli.sub", "rrsis_cli.sub.b"})]


def test_no_import_cycles():
    found = set(cycles(import_graph()))
    new = [" <-> ".join(sorted(c)) for c in found - set(KNOWN_CYCLES)]
    gone = [" <-> ".join(sorted(c)) for c in set(KNOWN_CYCLES) - found]
    assert not new, f"import cycles: {new}"
    assert not gone, f"no longer a cycle, remove it from KNOWN_CYCLES: {gone}"


def test_dependencies_point_one_way():
    graph = import_graph()
    wrong = []
    for module, targets in graph.items():
        for target in targets:
            if within(target, ("rrsis_cli.cli",)) and not within(module, ("rrsis_cli.cli", "rrsis_cli.__main__")):
                wrong.append(f"{module} -> {target} (only the command line imports the command line)")
            if within(module, ("rrsis_cli.models", "rrsis_cli.data")) and \
                    within(target, (*PIPELINES, *STAGES, "rrsis_cli.cli")):
                wrong.append(f"{module} -> {target} (models and data are below the stages and pipelines)")
            if within(module, STAGES) and within(target, PIPELINES):
                wrong.append(f"{module} -> {target} (a stage serves the pipelines)")
            if within(module, PIPELINES) and within(target, PIPELINES) and \
                    target.split(".")[1] != module.split(".")[1]:
                wrong.append(f"{module} -> {target} (one pipeline does not borrow from another)")
    assert not wrong, "\n".join(sorted(wrong))


def predict_order_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports inside the predict package that go against :data:`PREDICT_ORDER`, and its modules not listed."""
    wrong = [f"{m} is not in PREDICT_ORDER" for m in sorted(graph)
             if m.startswith(PREDICT + ".") and m.removeprefix(PREDICT + ".") not in PREDICT_ORDER]
    for position, name in enumerate(PREDICT_ORDER):
        module = f"{PREDICT}.{name}"
        for target in sorted(graph.get(module, ())):
            if target == PREDICT:
                wrong.append(f"{module} -> {target} (a module of the package imports the package)")
            elif within(target, (PREDICT,)) and target.removeprefix(PREDICT + ".") not in PREDICT_ORDER[:position]:
                wrong.append(f"{module} -> {target} (against the flow of PREDICT_ORDER)")
    return wrong


def test_the_order_check_sees_imports_against_the_flow():
    graph = {PREDICT: {f"{PREDICT}.driver"}, f"{PREDICT}.options": {f"{PREDICT}.records"},
             f"{PREDICT}.records": {PREDICT}, f"{PREDICT}.tasks": {f"{PREDICT}.runner"}, f"{PREDICT}.extra": set()}
    assert predict_order_violations(graph) == [
        f"{PREDICT}.extra is not in PREDICT_ORDER",
        f"{PREDICT}.options -> {PREDICT}.records (against the flow of PREDICT_ORDER)",
        f"{PREDICT}.records -> {PREDICT} (a module of the package imports the package)"]


def test_the_predict_package_flows_one_way():
    graph = import_graph()
    assert {m for m in graph if m.startswith(PREDICT + ".")} == {f"{PREDICT}.{name}" for name in PREDICT_ORDER}
    wrong = predict_order_violations(graph)
    assert not wrong, "\n".join(wrong)


def test_distributed_and_grounding_do_not_import_predict():
    """predict hands its task functions to distributed and calls grounding; neither imports it back."""
    graph = import_graph()
    wrong = [f"{module} -> {target}" for module in ("rrsis_cli.distributed", "rrsis_cli.grounding")
             for target in sorted(graph[module]) if within(target, (PREDICT,))]
    assert not wrong, "\n".join(wrong)
