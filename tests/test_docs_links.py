"""Every relative link in README.md and docs/*.md points to a file or directory that exists."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and ![alt](target); the target ends at whitespace (an optional "title") or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def relative_links(text: str) -> list[str]:
    """The relative link targets of a markdown page, without #anchors; code is not markdown."""
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = []
    for target in LINK.findall(text):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http(s)://, mailto: and pure anchors
        targets.append(target.split("#", 1)[0])
    return targets


def test_link_parser():
    text = ("[a](docs/x.md) ![b](fig.png) [c](https://e.org) [d](#top) [e](y.md#part) "
            '[f](z.md "title") `[g](in_code.md)`\n```\n[h](in_block.md)\n```\n')
    assert relative_links(text) == ["docs/x.md", "fig.png", "y.md", "z.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    links = relative_links(page.read_text())
    broken = [t for t in links if not (page.parent / t).exists()]
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def test_pages_with_figures_link_them():
    assert any(t.endswith(".png") for t in relative_links((ROOT / "docs/fashion_mnist.md")
                                                           .read_text()))
