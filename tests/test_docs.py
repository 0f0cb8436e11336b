"""The repository cites only documents it contains, and every cited section exists.

Code, tests, benchmarks, config, the systemd unit, README and docs/ once cited notes and
research files that live outside the repository; a reader of the code could not follow them. This
checks, over every text file of those places:

* no citation of a document that is not in the repository (the old design and reference notes);
* every ``docs/<name>.md`` named exists, and so does every relative link between docs/ files;
* every quoted section after a citation (``docs/security.md, "Verdicts"``, ``README
  ("Configuration"``) is a heading of that document, and every ``#anchor`` of a link is one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED_DIRS = ("ckptd", "tests", "benchmarks", "config", "systemd", "docs", ".ci")
SCANNED_FILES = ("README.md", "pyproject.toml")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".service", ".conf", ".txt", ".cfg", ""}

# Names of documents that are not in the repository. Built from parts so this file, which is
# scanned too, does not match itself.
MISSING_DOCS = tuple(
    "".join(parts)
    for parts in (
        ("design", ".md"),
        ("design", " notes"),
        ("runtime", "-notes"),
        ("pickle", "-security.md"),
        ("sb2", "-formats"),
        ("style", "-anchors"),
        ("retention", "-survey"),
        ("reference", "/"),
        ("../", "shared"),
    )
)

DOC_NAME = re.compile(r"\bdocs/([A-Za-z0-9_.-]+\.md)")
# A citation followed by a quoted section: `docs/x.md, "Sec"`, `docs/x.md ("Sec"`,
# `README, "Sec"`, `README ("Sec"`, `` `docs/x.md`, "Sec" ``.
SECTION_CITE = re.compile(
    r"(?<![\w/])(README(?:\.md)?|docs/[A-Za-z0-9_.-]+\.md)`?,?\s+\(?\"([^\"]{1,120})\""
)
MD_LINK = re.compile(r"\]\(([A-Za-z0-9_.-]+\.md)?(?:#([a-z0-9-]+))?\)")


def _scanned() -> list[Path]:
    files = [ROOT / name for name in SCANNED_FILES]
    for top in SCANNED_DIRS:
        for path in sorted((ROOT / top).rglob("*")):
            if (
                path.is_file()
                and path.suffix in TEXT_SUFFIXES
                and "__pycache__" not in path.parts
                and path.stat().st_size < 2_000_000
            ):
                files.append(path)
    return files


def _text(path: Path, *, citing: bool = False) -> str | None:
    """The file's text; ``citing``: None for this file, whose examples are not citations."""
    if citing and path == Path(__file__).resolve():
        return None
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def _joined(text: str) -> str:
    """Text with comment markers at line starts removed and whitespace runs collapsed, so a
    citation wrapped over two comment or docstring lines reads as one."""
    text = re.sub(r"\n[ \t]*(?:#|//|\*)?[ \t]*", " ", text)
    return re.sub(r"[ \t]+", " ", text)


def _headings(doc: Path) -> set[str]:
    found = set()
    for line in doc.read_text(encoding="utf-8").splitlines():
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            found.add(match.group(1).strip())
    return found


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _target(name: str) -> Path:
    return ROOT / ("README.md" if name.startswith("README") else name)


def test_the_scan_sees_the_places_that_cite() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in _scanned()}
    for expected in (
        "README.md",
        "ckptd/convert/legacy.py",
        "docs/architecture.md",
        "tests/test_docs.py",
    ):
        assert expected in names
    assert any(name.startswith("systemd/") for name in names)
    assert any(name.startswith("benchmarks/") for name in names)


@pytest.mark.parametrize("needle", MISSING_DOCS)
def test_nothing_cites_a_document_outside_the_repository(needle: str) -> None:
    hits = []
    for path in _scanned():
        text = _text(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if needle in line:
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_every_named_doc_exists() -> None:
    missing = []
    for path in _scanned():
        text = _text(path, citing=True)
        if text is None:
            continue
        for name in DOC_NAME.findall(text):
            if not (ROOT / "docs" / name).is_file():
                missing.append(f"{path.relative_to(ROOT)}: docs/{name}")
    assert not missing, "\n".join(missing)


def test_every_cited_section_is_a_heading_of_its_document() -> None:
    wrong = []
    cited = 0
    for path in _scanned():
        text = _text(path, citing=True)
        if text is None:
            continue
        for name, section in SECTION_CITE.findall(_joined(text)):
            doc = _target(name)
            if not doc.is_file():
                continue  # test_every_named_doc_exists reports it
            cited += 1
            headings = {h.replace("`", "") for h in _headings(doc)}
            if section.replace("`", "") not in headings:
                wrong.append(f'{path.relative_to(ROOT)}: {name}, "{section}"')
    assert not wrong, "sections that are no heading of the cited document:\n" + "\n".join(wrong)
    assert cited > 20  # the pattern still finds the citations it is meant to check


def test_links_between_docs_resolve() -> None:
    broken = []
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for name, anchor in MD_LINK.findall(doc.read_text(encoding="utf-8")):
            target = doc.parent / name if name else doc
            if not target.is_file():
                broken.append(f"{doc.name}: {name}")
                continue
            if anchor and anchor not in {_slug(h) for h in _headings(target)}:
                broken.append(f"{doc.name}: {name}#{anchor}")
    assert not broken, "\n".join(broken)


def test_the_citation_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    """The patterns match the citation shapes used in the code (so the tests above can fail)."""
    sample = (
        '"""Step 3 (docs/formats.md, "The safe\n    legacy reader"); exit codes (README, '
        '"Commands").\n# see `docs/security.md`, "Verdicts"\n"""'
    )
    found = SECTION_CITE.findall(_joined(sample))
    assert found == [
        ("docs/formats.md", "The safe legacy reader"),
        ("README", "Commands"),
        ("docs/security.md", "Verdicts"),
    ]
    assert DOC_NAME.findall("see docs/nowhere.md") == ["nowhere.md"]
    assert _slug("Manifest and index") == "manifest-and-index"
    assert _slug("`held`: what it means") == "held-what-it-means"
