"""Fail when the built site shows reST markup that Markdown printed as text.

    python docs/check_rendered.py SITE_DIR

The API reference is rendered from docstrings (mkdocstrings, google style), where reST means
nothing: a Sphinx role (:meth:`x`, :class:`x`, :py:func:`x` ...) comes out as the role's name
next to inline code, a reST literal-block marker leaves ``::`` at the end of a paragraph, and
a doctest outside an ``Examples:`` section becomes nested block quotes, and an example
without a fence reads as one paragraph. This looks for each
of them in every HTML page of SITE_DIR, outside code blocks, and prints the file and a snippet
of every one it finds.

It also checks that each page ``reference/<package>/`` documents exactly the package's
``__all__``: the pages list their names by hand, in an order meant for readers, so a name
added to or dropped from ``__all__`` must show up here (this needs the packages importable).

Exit status: 0 when nothing is found, 1 otherwise, 2 on bad usage.
"""

from __future__ import annotations

import html
import importlib
import re
import sys
from pathlib import Path

ROLES = "meth|class|func|attr|mod|obj|exc|data|ref|const|py:\\w+"
# the role's name, then its target as Markdown renders it: inline code, or a backtick left
# over (escaped or not) when the backticks did not pair up
ROLE = re.compile(rf":(?:{ROLES}):(?=<code>|`|&#96;|&#x60;)")
# reST's "Example::" / "as follows::" marker, left at the end of a paragraph or list item
LITERAL_MARKER = re.compile(r"[^:\s]::\s*</(?:p|li)>")
# ">>> x" outside an Examples section: Markdown reads the prompt as three block quotes
DOCTEST_AS_QUOTES = re.compile(r"<blockquote>\s*<blockquote>\s*<blockquote>")
# a Python line in a paragraph (not in a code block): an example without a fence or Examples section
PARAGRAPH = re.compile(r"<p>(.*?)</p>", re.DOTALL)
CODE_LINE = re.compile(
    r"^\s*(?:from [\w.]+ import \w+|import [\w.]+\s*$|def \w+\(.*\):|class \w+(?:\(.*\))?:)",
    re.MULTILINE,
)
INLINE_CODE = re.compile(r"<code>.*?</code>", re.DOTALL)
# text Markdown leaves alone: code blocks, scripts, styles
VERBATIM = re.compile(
    r"<(pre|script|style)\b.*?</\1>", re.DOTALL | re.IGNORECASE
)

CHECKS = [
    ("Sphinx role", ROLE),
    ("reST '::' marker", LITERAL_MARKER),
    ("doctest rendered as block quotes", DOCTEST_AS_QUOTES),
]


def _blank(match: re.Match[str]) -> str:
    # keep the length, so offsets (and the snippets around them) stay where they were
    return " " * len(match.group(0))


def _snippet(text: str, start: int, end: int, width: int = 70) -> str:
    piece = text[max(0, start - width) : end + width]
    piece = html.unescape(re.sub(r"<[^>]+>", "", piece))
    return " ".join(piece.split())


def problems(page: str) -> list[tuple[str, str]]:
    """Every (kind, snippet) of raw reST markup in one HTML page's text."""
    text = VERBATIM.sub(_blank, page)
    found = []
    for kind, pattern in CHECKS:
        for match in pattern.finditer(text):
            found.append((kind, _snippet(text, match.start(), match.end())))
    for paragraph in PARAGRAPH.finditer(text):
        prose = INLINE_CODE.sub(_blank, paragraph.group(1))
        line = CODE_LINE.search(prose)
        if line:
            start = paragraph.start(1) + line.start()
            found.append(
                (
                    "code rendered as prose",
                    _snippet(text, start, start + len(line.group(0))),
                )
            )
    return found


# the heading mkdocstrings gives each documented object: its dotted path as the anchor
HEADING_ID = re.compile(r'<h\d id="([\w.]+)" class="doc doc-heading"')


def reference_problems(package: str, page: str) -> list[str]:
    """How the objects documented at the top of ``package``'s reference page differ from its ``__all__``."""
    try:
        public = set(importlib.import_module(package).__all__)
    except ImportError as error:
        return [
            f"cannot import {package} to compare the page with its __all__: {error}"
        ]
    prefix = package + "."
    shown = {
        name[len(prefix) :]
        for name in HEADING_ID.findall(page)
        if name.startswith(prefix) and "." not in name[len(prefix) :]
    }
    found = [
        f"{name} is in {package}.__all__ but not on the page"
        for name in sorted(public - shown)
    ]
    found += [
        f"{name} is on the page but not in {package}.__all__"
        for name in sorted(shown - public)
    ]
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    site = Path(argv[0])
    pages = sorted(site.rglob("*.html"))
    count = 0
    for path in pages:
        for kind, snippet in problems(path.read_text(encoding="utf-8")):
            count += 1
            print(f"{path.relative_to(site)}: {kind}: ...{snippet}...")
    for page in sorted((site / "reference").glob("*/index.html")):
        for problem in reference_problems(
            page.parent.name, page.read_text(encoding="utf-8")
        ):
            count += 1
            print(f"{page.relative_to(site)}: {problem}")
    if count:
        print(f"{count} problem(s) in {site}", file=sys.stderr)
        return 1
    print(
        f"no raw reST markup in the {len(pages)} pages of {site}; the reference pages match __all__"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
