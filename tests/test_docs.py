"""The project's documentation is in the repository: nothing cites a file outside it, every
``docs/<file>.md`` that code or docs mention exists, and every section or anchor they point to
is a heading of that file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO

#: where code, configs and docs live (README.md is added below)
SCANNED_DIRS = ("alignx", "plugins", "tests", "conf", "docs")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".cfg", ".txt"}
SKIPPED_PARTS = {"__pycache__", "build", "dist", ".pytest_cache"}

# Files outside the repository that code once cited. The needles are assembled, so this file
# does not cite them itself.
OUTSIDE = [
    "REFERENCE" + ".md",
    "DESIGN" + ".md",
    ".." + "/shared",
    "/work" + "/shared",
    "shared" + "/REFERENCE",
]

DOC_REF = re.compile(r"docs/([\w-]+\.md)")
# ``docs/<file>.md`` ("Section", "Other section")  or  docs/<file>.md, "Section"
SECTION_REF = re.compile(r'docs/([\w-]+\.md)`*\)?(?:,\s*|\s+)\(?((?:"[^"]+"(?:,\s*)?)+)')
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")


def scanned_files() -> list[Path]:
    files = [REPO / "README.md"]
    for top in SCANNED_DIRS:
        for path in sorted((REPO / top).rglob("*")):
            parts = set(path.relative_to(REPO).parts)
            if (
                path.is_file()
                and path.suffix in SUFFIXES
                and not parts & SKIPPED_PARTS
                and not any(p.endswith(".egg-info") for p in parts)
            ):
                files.append(path)
    return files


def slug(heading: str) -> str:
    """The anchor GitHub gives a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def headings(md: Path) -> tuple[set[str], set[str]]:
    """(heading texts, their anchors) of a markdown file, code blocks skipped."""
    texts, in_code = set(), False
    for line in md.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"#{1,6} ", line):
            texts.add(line.lstrip("#").strip())
    return texts, {slug(t) for t in texts}


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_the_docs_exist():
    for name in ("losses.md", "online_rl.md", "metrics.md"):
        assert (REPO / "docs" / name).is_file(), name


def test_nothing_cites_a_file_outside_the_repository():
    hits = []
    for path in scanned_files():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for needle in OUTSIDE:
                if needle in line:
                    hits.append(f"{rel(path)}:{n}: {needle}")
    assert not hits, "citations of files outside the repository:\n" + "\n".join(hits)


def test_every_docs_file_mentioned_exists_and_its_sections_are_headings():
    missing, bad_sections, mentions = [], [], 0
    for path in scanned_files():
        text = path.read_text(errors="replace")
        for match in DOC_REF.finditer(text):
            mentions += 1
            if not (REPO / "docs" / match.group(1)).is_file():
                missing.append(f"{rel(path)}: docs/{match.group(1)}")
        # sections named after a mention; docstrings wrap lines, so compare with whitespace collapsed
        flat = re.sub(r"\s+", " ", text.replace("#:", " ").replace("#", " "))
        for match in SECTION_REF.finditer(flat):
            doc = REPO / "docs" / match.group(1)
            if not doc.is_file():
                continue
            texts, _ = headings(doc)
            for section in re.findall(r'"([^"]+)"', match.group(2)):
                if section not in texts:
                    bad_sections.append(f'{rel(path)}: docs/{match.group(1)} has no section "{section}"')
    assert mentions >= 10, f"expected the code to point at docs/ (found {mentions} mentions)"
    assert not missing, "docs files mentioned but absent:\n" + "\n".join(missing)
    assert not bad_sections, "\n".join(bad_sections)


@pytest.mark.parametrize("md", ["README.md", "docs/losses.md", "docs/online_rl.md", "docs/metrics.md"])
def test_markdown_links_stay_inside_the_repository_and_resolve(md: str):
    source = REPO / md
    broken = []
    for target in MD_LINK.findall(source.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (source.parent / file_part).resolve() if file_part else source
        if REPO.resolve() not in dest.parents and dest != REPO.resolve():
            broken.append(f"{target}: outside the repository")
            continue
        if not dest.exists():
            broken.append(f"{target}: no such file")
            continue
        if anchor and dest.suffix == ".md" and anchor not in headings(dest)[1]:
            broken.append(f"{target}: no heading with anchor #{anchor} in {rel(dest)}")
    assert not broken, f"{md}:\n" + "\n".join(broken)


def test_slug_matches_githubs_rule():
    assert slug("Online RL (PPO, GRPO, RLOO)") == "online-rl-ppo-grpo-rloo"
    assert slug("Bradley–Terry on pairs") == "bradleyterry-on-pairs"
    assert slug("Adding a DPO variant") == "adding-a-dpo-variant"
