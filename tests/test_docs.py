"""The README and the docs render as written: every table is a table with as many cells
in each row as in its header, every local link leads to a file, and the README's two
commands are the ones the set-up script and CI run (issue 22)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]


def _cells(tokens, start: int, end: int) -> int:
    return sum(1 for t in tokens[start:end] if t.type in ("th_open", "td_open"))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_tables_render_whole(page: Path) -> None:
    text = page.read_text()
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    table_lines: set[int] = set()
    tables = 0
    for i, tok in enumerate(tokens):
        if tok.type == "table_open":
            tables += 1
            table_lines.update(range(*tok.map))
            close = next(j for j in range(i, len(tokens)) if tokens[j].type == "table_close")
            rows = [j for j in range(i, close) if tokens[j].type == "tr_open"]
            widths = [
                _cells(tokens, r, next(k for k in range(r, close) if tokens[k].type == "tr_close"))
                for r in rows
            ]
            assert len(set(widths)) == 1, f"{page.name}:{tok.map[0] + 1}: row widths {widths}"
    # A table that does not parse is a paragraph of |-lines: none may be left.
    in_code = False
    for n, line in enumerate(text.splitlines()):
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and line.startswith("|") and n not in table_lines:
            pytest.fail(f"{page.name}:{n + 1}: a table line that renders as text: {line[:60]}")
    if page.name == "README.md":
        assert tables >= 2  # the tasks and the configuration


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_local_links_lead_to_files(page: Path) -> None:
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" in target:
            continue
        assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_the_two_commands_of_a_fresh_machine() -> None:
    readme = (REPO / "README.md").read_text()
    main = (
        "bash recipes/setup-debian.sh && .venv/bin/invoke sim.run --file sims/iperf-baseline.toml"
    )
    tests = "bash .ci/setup && .venv/bin/python -m pytest"
    assert main in readme and tests in readme
    assert (REPO / "recipes/setup-debian.sh").is_file() and (
        REPO / "sims/iperf-baseline.toml"
    ).is_file()
    # The test command is what CI runs after its set-up.
    ci = (REPO / ".ci/run").read_text()
    assert "bash .ci/setup" in ci and ".venv/bin/python -m pytest" in ci
