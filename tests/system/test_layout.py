"""The house rules, checked on the source: no import cycles (function-local imports count),
no process package reaching into another's code, no private Prefect client."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: where each package of the installed `schedulemaster` lives in this tree (pyproject's package-dir)
PACKAGE_DIRS = {"schedulemaster": ROOT / "schedulemaster", "schedulemaster.flows": ROOT / "flows",
                "schedulemaster.deployments": ROOT / "deployments", "schedulemaster.ms_compat": ROOT / "ms_compat",
                "schedulemaster.blocks": ROOT / "blocks"}
#: packages named for a process: only the CLI (which starts them) may import one from another
PROCESSES = ("master", "node", "dispatcher", "notebook", "cli")


def modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            if package == "schedulemaster" and parts and f"schedulemaster.{parts[0]}" in PACKAGE_DIRS:
                continue
            out[name] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every project module ``name`` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def process_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PROCESSES else None


def test_the_tree_is_read():
    g = graph()
    assert "schedulemaster.node.firing" in g and "schedulemaster.deployments.tasks" in g
    assert "schedulemaster.coordination.wire" in g["schedulemaster.node.recorder"]


def test_no_import_cycles():
    g = graph()
    cycles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(g.get(m, ())):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_a_process_package_imports_no_other_process_package():
    crossing = [(m, n) for m, targets in graph().items() for n in targets
                if process_of(m) not in (None, "cli") and process_of(n) not in (None, process_of(m))]
    assert crossing == []


def test_no_private_prefect_client():
    used = [str(p.relative_to(ROOT)) for p in modules().values() if "._client." in p.read_text()
            or "._client)" in p.read_text()]
    assert used == []


def test_a_process_entry_module_does_not_import_prefect():
    """A process sets its Prefect settings (environment) before its first import of prefect,
    which reads them once: importing a process's module must not import prefect already."""
    import subprocess
    import sys

    code = ("import sys, schedulemaster, schedulemaster.cli.main, schedulemaster.master.process, "
            "schedulemaster.node.process, schedulemaster.dispatcher.process; "
            "print(sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


#: the modules that import project modules inside functions, and why (everywhere else such an
#: import goes at the top, where a reader sees what a module depends on)
LAZY_IMPORTERS = {
    "schedulemaster.cli.main": "`--help` and quick commands must not load what a process needs",
    "schedulemaster.cli.import_cli": "the same: the import's reader loads only when it runs",
    "schedulemaster.cli.admin_cli": "the same",
    "schedulemaster.master.process": "Prefect's settings (environment) are set before its first import",
    "schedulemaster.node.process": "the same",
    "schedulemaster.dispatcher.process": "the same",
    "schedulemaster.supervisor": "the same, for `up`'s children",
    "schedulemaster.settings": "every process reads its settings before anything else loads",
    "schedulemaster.node.worker": "Prefect imports the worker type in every process that loads its collections",
    "schedulemaster.deployments.pool": "imported by process modules before Prefect's settings are set",
}


def test_imports_inside_functions_only_where_start_up_needs_them():
    lazy = set()
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    module = (node.module if isinstance(node, ast.ImportFrom) else
                              node.names[0].name if isinstance(node, ast.Import) else None)
                    if module and module.startswith("schedulemaster"):
                        lazy.add(name)
    assert lazy <= set(LAZY_IMPORTERS), sorted(lazy - set(LAZY_IMPORTERS))
