"""The README and the guides stay true to the code: every ``wadi ...`` command they show parses with today's
command line, and every relative link and image in them (the lab notebook included) points at a file that exists.
The dated notebook (docs/lab/) keeps the commands as they were run, so only its links are checked."""

from __future__ import annotations

import argparse
import functools
import re
import shlex
from pathlib import Path

import pytest

from wadi_cli.cli import build_parser
from wadi_cli.commands import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
GUIDES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "lab" not in p.parts),
          *sorted((ROOT / "example_workflows").glob("*.md")), *sorted((ROOT / "web" / "docs").glob("*.md"))]
EVERY_PAGE = GUIDES + sorted((ROOT / "docs" / "lab").glob("*.md"))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)
INLINE = re.compile(r"`((?:\.venv/bin/)?wadi [^`]+)`")


def commands(text: str) -> list[str]:
    """``wadi ...`` commands in code blocks (continued lines joined, comments cut) and in inline code."""
    found = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip().removeprefix("$ ")
            found += [part.strip() for part in line.split("&&")]
    found += INLINE.findall(text)
    out = []
    for command in found:
        command = command.removeprefix(".venv/bin/")
        if command.startswith("wadi ") and "..." not in command and "|" not in command and ": error:" not in command:
            out.append(command)
    return out


def shown_commands():
    return [pytest.param(command, id=f"{page.relative_to(ROOT)}: {command[:60]}")
            for page in GUIDES for command in dict.fromkeys(commands(page.read_text()))]


def parse(argv: list[str]) -> None:
    """Parse as the command line would, except that required options may be left out: the pages show partial
    commands in prose (`wadi distill --steps 2400`); every flag named and every value given must still be right."""
    parser = build_parser(argv[0])
    sub = parser._subparsers._group_actions[0].choices[argv[0]]
    for action in sub._actions:
        action.required = False
    parser.parse_args(argv)


@pytest.mark.parametrize("command", shown_commands())
def test_every_command_shown_parses(command):
    argv = shlex.split(command)[1:]
    names = argv[0].split("/") if argv and argv[0] not in ("CMD", "COMMAND") and not argv[0].startswith("-") else []
    assert all(name in COMMANDS for name in names), f"`{command}`: no such command"
    if argv and argv[-1] in ("--help", "-h"):
        argv = argv[:-1]
    if len(names) != 1:  # "wadi CMD --help", "wadi generate/eval --student" in prose: the names are checked
        return
    try:
        parse(argv)
    except SystemExit as err:
        raise AssertionError(f"`{command}` does not parse with today's wadi (exit {err.code})") from None


def test_the_pages_show_commands():  # the scan itself finds what it should
    assert len(shown_commands()) > 30
    assert "wadi demo" in commands("```bash\nwadi demo     # a comment\n```")
    assert commands("run `wadi generate --student S --prompt p --out o` here") == \
        ["wadi generate --student S --prompt p --out o"]


@functools.lru_cache(maxsize=None)  # a page is read once, however many links point at it
def anchors(page: Path) -> frozenset[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return frozenset(found)


@pytest.mark.parametrize("page", EVERY_PAGE, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_image_resolves(page):
    text = FENCE.sub("", page.read_text())
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # web addresses
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to missing files or headings: {broken}"


def test_anchors_follow_githubs_rule(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# The losses\n## Channels-last kernels on a CPU\n### `wadi ui`: the tabs\n")
    assert anchors(page) == {"the-losses", "channels-last-kernels-on-a-cpu", "wadi-ui-the-tabs"}


def test_the_distillation_guide_has_a_row_for_every_flag():
    parser = build_parser("distill")
    sub = parser._subparsers._group_actions[0].choices["distill"]
    flags = {s for a in sub._actions for s in a.option_strings
             if s.startswith("--") and s != "--help" and a.help != argparse.SUPPRESS}
    text = (ROOT / "docs" / "distillation.md").read_text()
    table = "\n".join(line for line in text.splitlines() if line.startswith("| `--"))
    missing = sorted(f for f in flags if not re.search(rf"`{re.escape(f)}[` ]", table))
    assert not missing, f"docs/distillation.md's flag table has no row for {missing}"
    assert len(flags) > 40
