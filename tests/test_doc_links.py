"""Every relative link in README.md and docs/ resolves to a file inside the repository.

The README once linked ``../shared/DESIGN.md``, which exists only beside a development checkout:
in a clone the design was a dead link. So links are checked here, Markdown's inline form
(``[text](target)``, images too) and reference definitions (``[id]: target``); a URL with a
scheme (``https:``, ``mailto:``) is left alone, an anchor-only link must name a heading of its
own page, and a link to a heading of another page must name one of that page's headings.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.paths import ROOT

INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE = re.compile(r"`[^`\n]*`")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def pages(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def links(text: str) -> list[str]:
    """The link targets of a Markdown text, code blocks and code spans left out."""
    prose = CODE.sub("", FENCE.sub("", text))
    return INLINE.findall(prose) + REFERENCE.findall(prose)


def anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as ``-``."""
    out: set[str] = set()
    for line in FENCE.sub("", text).splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def broken(page: Path, root: Path = ROOT) -> list[str]:
    """``page: target (why)`` for every link of ``page`` that does not resolve in ``root``."""
    text = page.read_text(encoding="utf-8")
    out: list[str] = []
    for target in links(text):
        if SCHEME.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page.resolve()
        where = f"{page.relative_to(root)}: {target}"
        if not resolved.is_relative_to(root.resolve()):
            out.append(f"{where} (points outside the repository)")
        elif not resolved.exists():
            out.append(f"{where} (no such file)")
        elif (
            anchor
            and resolved.suffix == ".md"
            and anchor not in anchors(resolved.read_text(encoding="utf-8"))
        ):
            out.append(f"{where} (no heading #{anchor})")
    return out


def test_every_relative_link_of_the_docs_resolves_inside_the_repository() -> None:
    found = [problem for page in pages() for problem in broken(page)]
    assert found == []


def test_the_check_finds_a_link_outside_a_missing_file_and_a_missing_heading(
    tmp_path: Path,
) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## Two words\n")
    (tmp_path / "README.md").write_text(
        "See [design](../shared/DESIGN.md), [gone](docs/gone.md), [bad](docs/guide.md#nope),\n"
        "[ok](docs/guide.md#two-words), [web](https://example.com/x), [self](#readme),\n"
        "`[code](not/a/link.md)` and\n\n```\n[fenced](nor/this.md)\n```\n\n"
        "[ref]: docs/missing.md\n\n# Readme\n"
    )
    problems = broken(tmp_path / "README.md", tmp_path)
    assert problems == [
        "README.md: ../shared/DESIGN.md (points outside the repository)",
        "README.md: docs/gone.md (no such file)",
        "README.md: docs/guide.md#nope (no heading #nope)",
        "README.md: docs/missing.md (no such file)",
    ]


def test_the_architecture_map_names_every_folder_of_fsm_and_adapters() -> None:
    """The map in docs/architecture.md is written by hand: a folder added without a line in it
    would leave a newcomer guessing what it holds."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| `")}
    folders = {
        f"`{path.parent.relative_to(ROOT).as_posix()}/`"
        for package in ("fsm", "adapters")
        for path in (ROOT / package).rglob("__init__.py")
    }
    missing = sorted(
        folder
        for folder in folders
        if folder not in rows and f"{folder} (its own files)" not in rows
    )
    assert missing == []
