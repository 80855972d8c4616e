"""The shape of the code: the library imports no host, hosts import no CLI, no package imports another in a circle,
the trainer knows no world, and the command line starts without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("wadi_core", "wadi_cli", "wadi_comfy", "wadi_webui")
HOSTS = ("wadi_cli", "wadi_comfy", "wadi_webui")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports() -> dict[str, set[str]]:
    """Every first-party import of every module, lazy ones inside functions included."""
    mods = modules()

    def resolve(name: str) -> str | None:
        parts = name.split(".")
        while parts:
            if ".".join(parts) in mods:
                return ".".join(parts)
            parts.pop()
        return None

    edges = defaultdict(set)
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in mods else base for alias in node.names]
            for target in targets:
                resolved = resolve(target)
                if resolved and resolved != name:
                    edges[name].add(resolved)
    return edges


def test_the_library_imports_no_host_and_hosts_import_no_cli():
    bad = [f"{a} -> {b}" for a, targets in imports().items() for b in targets
           if (a.startswith("wadi_core") and b.split(".")[0] in HOSTS)
           or (a.split(".")[0] in ("wadi_comfy", "wadi_webui") and b.startswith("wadi_cli"))]
    assert bad == []


def test_no_modules_import_each_other_in_a_circle():
    graph = imports()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))
    for module in modules():
        if module not in index:
            visit(module)
    assert circles == []


def test_the_trainer_knows_no_world():
    assert not any(target.startswith("wadi_core.shapes") for target in imports()["wadi_core.distill.trainer"])


@pytest.mark.parametrize("argv", [["--help"], ["distill", "--help"], ["generate", "--help"], ["dreambooth", "--help"],
                                  ["reversion", "--help"], ["merge", "--help"], ["analyze", "--help"]])
def test_help_loads_no_torch(argv):
    code = ("import sys\nfrom wadi_cli import cli\ntry:\n    cli.main(%r)\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))" % argv)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr


def test_the_reversion_help_states_the_configs_defaults():
    """The help of `wadi reversion` names the defaults without importing the task (which loads torch)."""
    from wadi_cli.cli import build_parser
    from wadi_core.tasks.reversion import ReVersionConfig
    parser = build_parser("reversion")
    sub = next(a for a in parser._actions if a.dest == "command").choices["reversion"]
    helps = {a.dest: a.help for a in sub._actions}
    defaults = ReVersionConfig()
    for name in ("steps", "batch_size", "lr", "steer_weight", "importance_alpha"):
        stated = float(helps[name].split("default ")[1].split(";")[0].split(")")[0])
        assert stated == getattr(defaults, name), name
