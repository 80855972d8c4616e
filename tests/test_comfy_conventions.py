"""ComfyUI's conventions for a node pack: a description on every node and a tooltip on every input, a help page
per node (``WEB_DIRECTORY/docs/<node id>.md``), ``example_workflows/`` with same-named ``.jpg`` thumbnails for the
template browser, and complete Comfy Registry metadata in pyproject.toml. No ComfyUI needed: the node classes
only ask ``folder_paths`` for file lists, which a stand-in answers."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def nodes(monkeypatch):
    folder_paths = types.ModuleType("folder_paths")
    folder_paths.get_filename_list = lambda kind: []
    folder_paths.get_folder_paths = lambda kind: []
    monkeypatch.setitem(sys.modules, "folder_paths", folder_paths)
    from wadi_comfy.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    assert NODE_CLASS_MAPPINGS.keys() == NODE_DISPLAY_NAME_MAPPINGS.keys()
    return NODE_CLASS_MAPPINGS


def inputs_of(cls) -> dict[str, tuple]:
    declared = cls.INPUT_TYPES()
    return {**declared["required"], **declared.get("optional", {})}


def test_every_node_has_a_description_and_every_input_a_tooltip(nodes):
    missing = [f"{node_id}.{name}" for node_id, cls in nodes.items() for name, spec in inputs_of(cls).items()
               if len(spec) < 2 or not spec[1].get("tooltip")]
    assert missing == []
    assert all(len(getattr(cls, "DESCRIPTION", "")) > 40 for cls in nodes.values())


def test_every_node_has_a_help_page_that_names_its_inputs(nodes):
    tree = ast.parse((ROOT / "__init__.py").read_text())
    web = next(node.value.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
               and any(getattr(t, "id", None) == "WEB_DIRECTORY" for t in node.targets))
    docs = (ROOT / web / "docs")
    for node_id, cls in nodes.items():
        page = docs / f"{node_id}.md"
        assert page.is_file(), page
        text = page.read_text()
        assert text.startswith("# "), page
        assert [name for name in inputs_of(cls) if f"**{name}**" not in text] == [], page
    assert {p.stem for p in docs.glob("*.md")} == set(nodes)


def test_example_workflows_have_same_named_jpeg_thumbnails():
    folder = ROOT / "example_workflows"
    graphs = {p.stem for p in folder.glob("*.json")}
    thumbnails = {p.stem for p in folder.glob("*.jpg")}
    assert graphs and graphs == thumbnails
    assert all((folder / f"{name}.jpg").read_bytes()[:3] == b"\xff\xd8\xff" for name in thumbnails)
    assert not list(folder.glob("*.png"))


def test_the_registry_metadata_is_complete():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["license"] and (ROOT / "LICENSE").is_file()
    assert project["description"] and project["name"]
    assert project["urls"]["Repository"].startswith("https://github.com/")
    assert re.fullmatch(r"[a-z][a-z0-9-]*", comfy["PublisherId"])
    assert comfy["DisplayName"]
    assert comfy["Icon"].startswith("https://") and comfy["Icon"].endswith("/web/icon.png")
    assert (ROOT / "web" / "icon.png").is_file()
    assert all((ROOT / path).exists() for path in comfy["includes"])
