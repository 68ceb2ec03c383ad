"""The machine's folder (vm/) stands on its own: its modules import only each other and the
few modules every part uses, never the sims, the Rust tests, the viewer or the tasks, and
no two of them import each other round a cycle. Read from the sources (every import,
also those inside functions), so a new arrow fails here before it ships."""

from __future__ import annotations

import ast
from pathlib import Path

import patchbay_vm_tasks

PACKAGE = Path(patchbay_vm_tasks.__file__).parent
# What vm/ may use outside itself: the modules every part of the package uses.
SHARED = {"settings", "errors", "files", "ui", "downloads", "packagedata", "durations"}


def _imports(path: Path) -> set[str]:
    """The package modules `path` imports, as dotted names under the package
    ("vm.qemu", "settings"); `from . import a, b` counts each module named."""
    package = path.parent.relative_to(PACKAGE).parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if not (node.module or "").startswith("patchbay_vm_tasks"):
                    continue
                base = node.module.split(".")[1:]
            else:
                base = [*package[: len(package) - node.level + 1], *(node.module or "").split(".")]
                base = [part for part in base if part]
            for alias in node.names:
                candidate = [*base, alias.name]
                module = (PACKAGE.joinpath(*candidate).with_suffix(".py")).exists()
                found.add(".".join(candidate if module else base))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("patchbay_vm_tasks."):
                    found.add(alias.name.split(".", 1)[1])
    return found


def _graph() -> dict[str, set[str]]:
    modules = {}
    for path in sorted((PACKAGE / "vm").glob("*.py")):
        name = "vm" if path.stem == "__init__" else f"vm.{path.stem}"
        modules[name] = _imports(path) - {name}
    return modules


def test_vm_imports_only_itself_and_the_shared_modules() -> None:
    for module, imported in _graph().items():
        # "": the package's __init__, which holds only its version.
        outside = {m for m in imported if m.split(".")[0] not in ("vm", "") and m not in SHARED}
        assert not outside, f"{module} imports {sorted(outside)}"


def test_the_shared_modules_import_nothing_of_vm() -> None:
    for name in SHARED:
        imported = _imports(PACKAGE / f"{name}.py")
        assert not {m for m in imported if m.startswith("vm")}, f"{name} imports {imported}"


def test_vm_has_no_import_cycle() -> None:
    graph = _graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = path[path.index(module) :] + [module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done or module not in graph:
            return
        for dep in sorted(graph[module]):
            visit(dep, [*path, module])
        done.add(module)

    for module in graph:
        visit(module, [])
