"""The documentation's promises: every ```python block of README.md and docs/*.md runs, and every
relative link points at an existing file (and, with a #fragment, at an existing heading).

Each page's python blocks run in order in one namespace, in a temporary working directory. A block
is skipped only when the line right before its fence (blank lines aside) is
`<!-- not run: REASON -->` with a non-empty reason. Pages are found by glob, so new docs pages are
covered without touching this file.
"""

from __future__ import annotations

import contextlib
import os
import re
import traceback
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\s]*)[^`]*$")
NOT_RUN = re.compile(r"^\s*<!--\s*not run:(?P<reason>.*?)-->\s*$")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?(?P<target>[^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(?P<target>\S+?)>?(?:\s+.*)?$")
HTML_LINK = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*\"(?P<target>[^\"]+)\"", re.IGNORECASE)
# Extras a sample may need (pyproject's optional dependencies): without them the rest of the page is skipped.
OPTIONAL_MODULES = {"diffusers", "transformers", "PIL", "tqdm", "numpy", "hypothesis"}
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(?P<title>.+?)\s*#*\s*$")


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    info: str  # the fence's language word
    code: str
    skip_reason: str | None


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def split_page(text: str) -> tuple[list[Block], list[tuple[int, str]]]:
    """The fenced blocks of a page, and its other lines (1-based number, text) outside any fence."""
    lines = text.splitlines()
    blocks, prose = [], []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        indent, fence, info = match["indent"], match["fence"], match["info"].lower()
        previous = next((line for line in reversed(lines[:i]) if line.strip()), "")
        marker = NOT_RUN.match(previous)
        body, j = [], i + 1
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
                break
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        else:
            raise AssertionError(f"line {i + 1}: the code fence {fence!r} is never closed")
        reason = marker["reason"].strip() if marker else None
        blocks.append(Block(i + 1, info, "\n".join(body) + "\n", reason))
        i = j + 1
    return blocks, prose


def python_blocks(page: Path) -> list[Block]:
    blocks, _ = split_page(page.read_text(encoding="utf-8"))
    return [block for block in blocks if block.info in ("python", "py", "python3")]


def heading_anchors(page: Path) -> set[str]:
    """GitHub-style anchors of a page's headings (lower case, punctuation dropped, spaces to '-')."""
    _, prose = split_page(page.read_text(encoding="utf-8"))
    anchors, seen = set(), {}
    for _, line in prose:
        match = HEADING.match(line)
        if not match:
            continue
        title = INLINE_CODE.sub(lambda m: m.group(0).strip("`"), match["title"])
        title = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link in a heading keeps its text
        slug = "".join(c for c in title.lower() if c in " -_" or unicodedata.category(c)[0] in "LN").replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def relative_links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of every link of a page that is not an absolute URL, outside code."""
    _, prose = split_page(page.read_text(encoding="utf-8"))
    links = []
    for number, line in prose:
        line = INLINE_CODE.sub("", line)
        targets = [m["target"] for m in INLINE_LINK.finditer(line)] + [m["target"] for m in HTML_LINK.finditer(line)]
        reference = REFERENCE_LINK.match(line)
        if reference:
            targets.append(reference["target"])
        for target in targets:
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http:, https:, mailto:, ...
                continue
            links.append((number, target))
    return links


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_python_samples_run(page, tmp_path, monkeypatch, one_torch_thread):
    blocks = python_blocks(page)
    for block in blocks:
        if block.skip_reason is not None:
            assert block.skip_reason, f"{_page_id(page)}:{block.line}: '<!-- not run: -->' needs a reason"
    runnable = [block for block in blocks if block.skip_reason is None]
    if not runnable:
        pytest.skip(f"{_page_id(page)} has no python sample to run")
    monkeypatch.chdir(tmp_path)  # samples may write files
    namespace = {"__name__": "__docs__"}
    with _environment_restored():  # samples may set variables (the ISA switch) and fail before unsetting them
        _run_blocks(page, runnable, namespace)


@contextlib.contextmanager
def _environment_restored():
    saved = dict(os.environ)
    try:
        yield
    finally:
        for name in set(os.environ) - set(saved):
            del os.environ[name]
        os.environ.update(saved)


def _run_blocks(page, runnable, namespace):
    for block in runnable:
        # Leading newlines make tracebacks give the page's own line numbers.
        code = compile("\n" * block.line + block.code, _page_id(page), "exec")
        try:
            exec(code, namespace)
        except ModuleNotFoundError as error:
            if (error.name or "").partition(".")[0] not in OPTIONAL_MODULES:
                raise
            pytest.skip(f"{_page_id(page)}:{block.line} needs the optional module {error.name!r}")
        except Exception as error:
            lines = [
                frame.lineno
                for frame in traceback.extract_tb(error.__traceback__)
                if frame.filename == code.co_filename
            ]
            raise AssertionError(
                f"{_page_id(page)}:{lines[-1] if lines else block.line}: the python sample starting at line "
                f"{block.line} failed: {type(error).__name__}: {error}"
            ) from error


def test_samples_leave_the_environment_as_they_found_it(monkeypatch):
    monkeypatch.setenv("VIDMEM_EXT_CPU_ISA", "portable")
    monkeypatch.delenv("VIDMEM_DOCS_TEST_NEW", raising=False)
    with pytest.raises(RuntimeError, match="a sample failed"), _environment_restored():
        del os.environ["VIDMEM_EXT_CPU_ISA"]
        os.environ["VIDMEM_DOCS_TEST_NEW"] = "1"
        raise RuntimeError("a sample failed")
    assert os.environ["VIDMEM_EXT_CPU_ISA"] == "portable" and "VIDMEM_DOCS_TEST_NEW" not in os.environ


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_relative_links_exist(page):
    broken = []
    for line, target in relative_links(page):
        path_part, _, fragment = target.partition("#")
        linked = page if not path_part else (page.parent / path_part).resolve()
        if not linked.exists():
            broken.append(f"{_page_id(page)}:{line}: {target} (no such file)")
        elif fragment and linked.suffix == ".md" and fragment.lower() not in heading_anchors(linked):
            broken.append(f"{_page_id(page)}:{line}: {target} (no heading with anchor #{fragment})")
    assert not broken, "broken links:\n" + "\n".join(broken)


SEMANTICS_CITATION = re.compile(r"docs/semantics\.md,\s*\"(?P<section>[^\"]+)\"")
SOURCE_SUFFIXES = {".py", ".md", ".h", ".cuh", ".cu", ".cpp", ".sh", ".txt", ".toml"}


def _source_files(*folders: str) -> list[Path]:
    return [
        path
        for folder in folders
        for path in sorted((ROOT / folder).rglob("*"))
        if path.is_file()
        and path.suffix in SOURCE_SUFFIXES
        and "__pycache__" not in path.parts
        and path != Path(__file__).resolve()  # this file spells the patterns out
    ]


def test_semantics_citations_name_a_section():
    """Code cites the semantics page as `docs/semantics.md, "Section"`: each cited section must exist."""
    semantics = ROOT / "docs" / "semantics.md"
    _, prose = split_page(semantics.read_text(encoding="utf-8"))
    sections = {m["title"] for _, line in prose if (m := HEADING.match(line))}
    cited, wrong = 0, []
    for path in [*_source_files("vidmem_ext", "tests", "benchmarks", "csrc", "docs"), ROOT / "README.md"]:
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for match in SEMANTICS_CITATION.finditer(line):
                cited += 1
                if match["section"] not in sections:
                    wrong.append(f"{path.relative_to(ROOT)}:{number}: {match['section']!r}")
    assert cited > 0, "no citation of docs/semantics.md found: the pattern or the tree changed"
    assert not wrong, f"cited sections missing from docs/semantics.md {sorted(sections)}:\n" + "\n".join(wrong)


def test_no_citation_of_the_old_semantics_file():
    """The contract lives in docs/semantics.md; "SEMANTICS.md section N" named a file outside the repository."""
    old = "SEMANTICS.md"
    stale = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in [*_source_files("vidmem_ext", "tests", "benchmarks", "csrc", "docs"), ROOT / "README.md"]
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if old in line
    ]
    assert not stale, f"cite docs/semantics.md and a section name instead of {old}:\n" + "\n".join(stale)


def test_collector_reads_fences_markers_and_links(tmp_path):
    """The parser itself, on a page with every case: a failure here would silently skip samples."""
    page = tmp_path / "page.md"
    page.write_text(
        "# Title `code`\n\n## Same\n\n## Same\n\n"
        "```python\nx = 1\n```\n\n"
        "<!-- not run: needs a GPU -->\n```python\nraise SystemExit\n```\n\n"
        "- item\n\n  ```python\n  y = x + 1\n  ```\n\n"
        "```bash\necho [not a link](nowhere.md)\n```\n\n"
        'See [a](other.md#part), `[b](ignored.md)`, <img src="pic.png">, [c](https://example.org/x.md),\n'
        "[d]: ref.md\n"
        "~~~python\n```\nnot the end\n~~~\n",
        encoding="utf-8",
    )
    blocks = python_blocks(page)
    assert [(b.code, b.skip_reason) for b in blocks] == [
        ("x = 1\n", None),
        ("raise SystemExit\n", "needs a GPU"),
        ("y = x + 1\n", None),
        ("```\nnot the end\n", None),
    ]
    assert [target for _, target in relative_links(page)] == ["other.md#part", "pic.png", "ref.md"]
    assert {"title-code", "same", "same-1"} <= heading_anchors(page)
