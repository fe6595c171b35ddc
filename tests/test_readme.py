"""README.md stays short and runnable: every ```python block runs, in order and in one namespace, on the real
embedded SmolLM2-135M (with max_new_tokens cut to a few tokens), and every relative link in README.md, docs/*.md
and results/README.md points at an existing file or folder (and a #fragment into a Markdown file at a heading)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.real
ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 260
SNIPPET_NEW_TOKENS = 8

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
LINK = re.compile(r"(?<!\!)\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def code_blocks(text: str, lang: str) -> list[str]:
    return [body for tag, body in FENCE.findall(text) if tag == lang]


def python_blocks() -> list[str]:
    return code_blocks(README.read_text(), "python")


def shrink(block: str) -> str:
    """The block with every max_new_tokens=<n> replaced by a few tokens, so the file stays fast."""
    return re.sub(r"max_new_tokens\s*=\s*\d+", f"max_new_tokens={SNIPPET_NEW_TOKENS}", block)


def without_code(text: str) -> str:
    """Markdown with fenced blocks and inline code removed: a link inside code is not a link."""
    text = FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def github_anchor(heading: str) -> str:
    """GitHub's id for a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(md: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", md.read_text())):
        base = github_anchor(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "results" / "README.md"]


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; keep it under {MAX_README_LINES}"


def test_snippets_bound_their_length():
    """Every generate/decode call in a README snippet names max_new_tokens, so the rewrite below bounds its cost."""
    blocks = python_blocks()
    assert blocks, "README.md has no ```python block"
    for i, block in enumerate(blocks, 1):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.Call):
                func = node.func  # model.generate(...) or specdec's decode(...), not tokenizer.decode(...)
                if (isinstance(func, ast.Attribute) and func.attr == "generate") or (
                        isinstance(func, ast.Name) and func.id == "decode"):
                    assert any(k.arg == "max_new_tokens" for k in node.keywords), (
                        f"python block {i}: {ast.unparse(node)[:80]}... needs max_new_tokens=<n> as a keyword")


def test_readme_python_blocks_run(capsys):
    """The blocks run as written (max_new_tokens aside), in order, in one namespace; any exception fails the test."""
    namespace: dict = {"__name__": "__readme__"}
    for i, block in enumerate(python_blocks(), 1):
        try:
            exec(compile(shrink(block), f"README.md python block {i}", "exec"), namespace)
        except Exception as exc:  # name the block, keep the traceback
            raise AssertionError(f"README.md python block {i} raised {type(exc).__name__}: {exc}\n{block}") from exc
    printed = capsys.readouterr().out
    assert printed.strip(), "the README snippets printed nothing"


@pytest.mark.parametrize("md", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(md):
    assert md.is_file(), f"{md.relative_to(ROOT)} is missing"
    broken = []
    for target in LINK.findall(without_code(md.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        if not dest.exists():
            broken.append(f"{target}: no such file or folder")
        elif fragment and dest.is_file() and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target}: no heading #{fragment} in {dest.relative_to(ROOT)}")
    assert not broken, f"{md.relative_to(ROOT)}: broken links:\n" + "\n".join(broken)
