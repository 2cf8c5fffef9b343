"""The docs stay true to the code: every config key is in the configuration reference (and no
key the reader does not know), every command's flags are described, links lead somewhere,
and the README stays a front page."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

from balancer.cli import build_parser
from balancer.config import known_keys, parse_config
from balancer.selection import check_algorithm

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
TABLE = re.compile(r"^## `\[{1,2}([a-z_.]+)\]{1,2}`")


def table_path(name: str) -> str:
    """`services.health_check` as the reader names it: `services[].health_check`."""
    lists = {"services": "services[]", "services.backends": "services[].backends[]"}
    parts = name.split(".")
    for size in range(len(parts), 0, -1):
        head = ".".join(parts[:size])
        if head in lists:
            return ".".join([lists[head], *parts[size:]])
    return name


def documented_keys() -> set[str]:
    keys: set[str] = set()
    prefix: str | None = None
    for line in (DOCS / "configuration.md").read_text().splitlines():
        if line.startswith("## "):
            match = TABLE.match(line)
            prefix = table_path(match.group(1)) if match else ("" if "Top level" in line else None)
            if prefix:
                keys.add(prefix.removesuffix("[]"))
        elif prefix is not None and (row := re.match(r"^\| `([a-z_]+)` \|", line)):
            keys.add(f"{prefix}.{row.group(1)}" if prefix else row.group(1))
    return keys


def test_every_config_key_is_in_the_reference_and_no_other() -> None:
    known, documented = known_keys(), documented_keys()
    assert known - documented == set(), "keys missing from docs/configuration.md"
    assert documented - known == set(), "keys in docs/configuration.md the reader does not know"


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_flag_of_every_command_says_what_it_does() -> None:
    parser = build_parser()
    commands = subcommands(parser)
    assert set(commands) == {"run", "check", "status", "backend", "client", "demo", "bench"}
    overview = parser.format_help()
    for name, command in commands.items():
        assert re.search(rf"^\s+{name}\s+\S", overview, re.M), f"{name} has no summary"
        text = command.format_help()
        assert "examples:" in text and f"balancer {name}" in text.split("examples:")[1], name
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            what = action.option_strings or [action.dest]
            assert action.help and len(action.help) > 15, f"{name} {what}: no help"
            has_default = action.default not in (None, False, "", [], argparse.SUPPRESS)
            if action.option_strings and has_default:
                shown = command._get_formatter()._get_help_string(action)
                assert shown is not None and "default" in shown, f"{name} {what}: default not shown"


def test_the_cli_reference_lists_every_flag() -> None:
    text = (DOCS / "cli.md").read_text()
    for name, command in subcommands(build_parser()).items():
        assert f"## {name}" in text, f"docs/cli.md has no section for {name}"
        section = text.split(f"## {name}", 1)[1].split("\n## ", 1)[0]
        for action in command._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}" in section, f"docs/cli.md: {name} {flag} missing"


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for a page's headings."""
    found = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def test_links_between_the_pages_lead_somewhere() -> None:
    pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_every_whole_config_in_the_docs_is_valid() -> None:
    """A TOML example with services in it is a config a user may copy: it must parse."""
    checked = 0
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for block in re.findall(r"```toml\n(.*?)```", page.read_text(), re.S):
            if "[[services]]" in block:
                parse_config(tomllib.loads(block), check_algorithm=check_algorithm)
                checked += 1
    assert checked >= 3


def test_the_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 300, len(lines)
    text = "\n".join(lines)
    for needed in ("make run", "make test", "python3 server.py 9001", "docs/"):
        assert needed in text, needed
