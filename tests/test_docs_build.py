"""The docs site builds with ``mkdocs build --strict`` (no warning: no missing page, broken
link or unresolved cross-reference), every guide and API page has its headings and code
blocks, and the generated reference covers every public module (see docs/hooks/)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import docs_site
import pytest

ROOT = docs_site.ROOT


class _Outline(HTMLParser):
    """Headings and code blocks of a page's main content (Material's ``md-content``)."""

    def __init__(self):
        super().__init__()
        self.headings: list[tuple[str, str]] = []
        self.code_blocks = 0
        self.images: list[str] = []
        self._heading: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if re.fullmatch(r"h[1-6]", tag):
            self._heading, self._text = tag, []
        elif tag == "pre":
            self.code_blocks += 1
        elif tag == "img":
            self.images.append(attrs.get("src", ""))

    def handle_endtag(self, tag):
        if tag == self._heading:
            self.headings.append((tag, "".join(self._text).replace("¶", "").strip()))
            self._heading = None

    def handle_data(self, data):
        if self._heading:
            self._text.append(data)


def outline(html_file: Path) -> _Outline:
    parser = _Outline()
    parser.feed(html_file.read_text())
    return parser


def test_strict_build_has_no_warnings():
    site, log, code = docs_site.build()
    assert code == 0, log[-4000:]
    assert "WARNING" not in log, log[-4000:]
    assert (site / "index.html").exists()


def test_every_markdown_page_renders_its_headings_and_code_blocks():
    site = docs_site.built_site()
    for page in sorted((ROOT / "docs").rglob("*.md")):
        source = page.read_text()
        rel = page.relative_to(ROOT / "docs").with_suffix("")
        html = site / (rel.parent if rel.name == "index" else rel) / "index.html"
        assert html.exists(), f"{page}: no page {html} in the built site"
        got = outline(html)
        prose = re.sub(r"^```.*?^```", "", source, flags=re.M | re.S)  # headings outside code
        want_headings = [h.strip("# `").strip() for h in re.findall(r"^#{1,6} .+$", prose, re.M)]
        got_text = [text.replace("`", "") for _, text in got.headings]
        for heading in want_headings:
            assert heading.replace("`", "") in got_text, f"{rel}: heading {heading!r} missing"
        fences = len(re.findall(r"^```\w", source, re.M))
        assert got.code_blocks >= fences, (
            f"{rel}: {fences} fenced blocks, {got.code_blocks} rendered"
        )
        for src in got.images:
            assert (html.parent / src).resolve().exists(), f"{rel}: image {src} missing"


def test_reference_has_a_page_per_public_module_and_dense_is_documented():
    sys.path.insert(0, str(ROOT / "docs" / "hooks"))
    try:
        import api_pages
    finally:
        sys.path.pop(0)
    site = docs_site.built_site()
    inv = docs_site.inventory(site)
    for module in api_pages.public_modules():
        assert (site / "api" / module / "index.html").exists(), f"no API page for {module}"
        assert module in inv, f"{module} not in the reference's objects.inv"
    dense = outline(site / "api" / "fnn.layers" / "index.html")
    assert ("h2", "Dense") in [(t, x.split("(")[0].strip()) for t, x in dense.headings]
    # Dense's docstring, shapes included, is what the page shows.
    assert (
        "[..., in_features] -&gt; [..., units]" in (site / "api/fnn.layers/index.html").read_text()
    )


# The three pages a reader opens first; the Dense anchor is on the fnn.layers page.
READER_PAGES = {
    "home": ("index.html", "fnn"),
    "dense": ("api/fnn.layers/index.html", "Dense"),
    "guide": ("guides/layer_protocol/index.html", "The layer protocol"),
}


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.parametrize("page", sorted(READER_PAGES))
def test_pages_render_in_headless_chromium(page, tmp_path):
    """Chromium (Debian's ``chromium``) loads the page, runs Material's scripts, and the DOM
    it ends with has the headings and code blocks; a screenshot (kept in tmp, out of the
    repository) is not blank."""
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (the HTML itself is checked above)")
    site = docs_site.built_site()
    path, heading = READER_PAGES[page]
    url = (site / path).as_uri()
    flags = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    flags += ["--virtual-time-budget=3000", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    parser = _Outline()
    parser.feed(dom.stdout)
    texts = [text.split("(")[0].strip() for _, text in parser.headings]
    assert heading in texts, f"{page}: heading {heading!r} not rendered; got {texts[:10]}"
    assert parser.code_blocks >= 1, f"{page}: no code block rendered"
    shot = tmp_path / f"{page}.png"
    subprocess.run(
        [*flags, "--window-size=1280,1200", f"--screenshot={shot}", url],
        capture_output=True,
        timeout=120,
        check=True,
    )
    from PIL import Image

    colors = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 16)
    assert colors is None or len(colors) > 16, f"{page}: the screenshot is blank"
