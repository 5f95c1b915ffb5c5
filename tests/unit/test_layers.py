"""Imports point one way: adapter -> core -> backends -> system; model and errors are
leaves everyone may use; only adapter/bus.py imports the D-Bus library."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "service" / "example_storage"
LAYERS = ["adapter", "core", "backends", "system"]
LEAVES = {"model", "errors", "progress", "__init__"}
DBUS_LIBRARIES = {"dbus_next", "dbus_fast", "dbus", "gi"}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(level, dotted module) of every import in a file; level 0 = absolute."""
    tree = ast.parse(path.read_text(), str(path))
    result = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            result.extend((0, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level and not module:
                result.extend((node.level, alias.name) for alias in node.names)
            else:
                result.append((node.level, module))
    return result


def _our_top(path: Path, level: int, module: str) -> str | None:
    """Which of our top-level parts (adapter, core, model, errors, ...) an import names."""
    if level == 0:
        parts = module.split(".")
        return parts[1] if parts[0] == "example_storage" and len(parts) > 1 else None
    rel = path.relative_to(PACKAGE).parts[:-1]
    base = list(rel[: len(rel) - (level - 1)]) if level > 1 else list(rel)
    target = base + (module.split(".") if module else [])
    if not target or not (PACKAGE / target[0]).exists() and target[0] not in LEAVES:
        return "__init__"
    return target[0]


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def test_imports_point_one_way():
    problems = []
    for path, part in _modules():
        allowed = LEAVES | (set(LAYERS[LAYERS.index(part):]) if part in LAYERS else {part})
        if part in ("daemon", "__main__"):
            allowed = LEAVES | set(LAYERS) | {"daemon"}
        if part in LEAVES - {"__init__"}:
            allowed = LEAVES
        for level, module in _imports(path):
            top = _our_top(path, level, module)
            if top is not None and top not in allowed:
                problems.append(f"{path.relative_to(PACKAGE)} imports {top}")
    assert problems == []


def test_only_the_bus_module_imports_the_dbus_library():
    offenders = []
    for path, _ in _modules():
        for level, module in _imports(path):
            if level == 0 and module.split(".")[0] in DBUS_LIBRARIES:
                offenders.append(str(path.relative_to(PACKAGE)))
    assert set(offenders) == {"adapter/bus.py"}
