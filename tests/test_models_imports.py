"""models/ has no import circle: handlers.py dispatches to savedmodel.py, hf.py and tfx_serving.py,
which share models/serving.py and models/locations.py and never import handlers.py back.

Every import counts, the ones inside functions too (a lazy import is still a cycle: it only
moves the failure to the first call that makes it).
"""
import ast
import pathlib

import models

MODELS = pathlib.Path(models.__file__).parent


def imports_of(path: pathlib.Path) -> set[str]:
    """The models.* modules a file imports, anywhere in it."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("models.")}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "models":
                out |= {f"models.{a.name}" for a in node.names if (MODELS / f"{a.name}.py").exists()}
            elif node.module.startswith("models."):
                out.add(node.module)
    return out


def graph() -> dict[str, set[str]]:
    return {f"models.{p.stem}": imports_of(p) for p in MODELS.glob("*.py") if p.stem != "__init__"}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_models_modules_import_no_circle():
    g = graph()
    assert {"models.handlers", "models.hf", "models.tfx_serving", "models.savedmodel"} <= set(g)
    assert cycles(g) == []


def test_the_serving_paths_do_not_import_the_dispatcher():
    g = graph()
    for module in ("models.hf", "models.tfx_serving", "models.savedmodel", "models.serving", "models.locations"):
        assert "models.handlers" not in g[module], module
