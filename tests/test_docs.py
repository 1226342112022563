"""The front door: a README a newcomer reads in five minutes, and no documentation link that leads
nowhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO

DOCS = sorted([REPO / "README.md", REPO / "benchmarks" / "README.md", *(REPO / "docs").rglob("*.md")])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _targets(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold commands, not links
    return [t for t in LINK.findall(text) if not re.match(r"^(https?:|mailto:|#)", t)]


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    broken = [t for t in _targets(page) if not (page.parent / t.split("#")[0]).resolve().exists()]
    assert not broken, f"{page.relative_to(REPO)}: links to nothing: {broken}"


def test_the_readme_is_short_and_in_the_order_a_newcomer_needs():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    want = ["Two commands", "Install", "Run the demo", "Your own data in three commands", "Predict on new images"]
    want += ["Results", "Layout", "Documentation"]
    assert [h for h in headings if h in want] == want, headings
    assert "../shared" not in text and "2-core" not in text.split("## Results")[0]  # no machine talk up front


def test_the_checker_sees_a_broken_link(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("[ok](p.md) [gone](nowhere.md) ![img](pic.png) [web](https://x.org) ```\n[code](x.md)\n```")
    assert [t for t in _targets(page) if not (page.parent / t).exists()] == ["nowhere.md", "pic.png"]


def test_the_readme_results_table_is_the_one_the_results_pages_make():
    """``gc10 report --table docs/results/*.md`` prints the README's table: nothing in it is typed by hand."""
    from gc10lib.report import table_rows

    pages = sorted(p for p in (REPO / "docs" / "results").glob("*.md") if p.name != "README.md")
    assert pages, "no results pages"
    expected = table_rows(pages, link_from=REPO)
    readme = (REPO / "README.md").read_text().splitlines()
    start = readme.index(expected[0])
    assert readme[start : start + len(expected)] == expected
    assert not readme[start + len(expected)].startswith("|"), "a row in the README that no page makes"
