"""Every ```python block of docs/*.md (and docs/guides/*.md) and of README.md runs.

A small collector, not a plugin: each page's Python blocks are extracted in order and
executed in one namespace (so a page reads as one script), in a temporary working
directory. A block is skipped only when it is marked as an illustration, either with the
fence info ``python title="illustration"`` or with an ``<!-- illustration -->`` comment on
the line before the fence. Other languages (``bash``, ``yaml``, plain fences) never run.
"""

from __future__ import annotations

import os
import re
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,}|~{3,})(?P<info>.*)$")
ILLUSTRATION = "<!-- illustration -->"
# README blocks known not to run on their own (README.md is edited by the lead only): the
# start of the block's code -> why. Such a block is run and must still fail (then the page
# is reported as xfail); once it runs, this entry has to go.
KNOWN_BROKEN: dict[str, str] = {}


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """``(line number, code, is_illustration)`` of each ```python block of Markdown ``text``."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        ticks, info = match["ticks"], match["info"].strip()
        start = i
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(ticks):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        language = info.split()[0] if info else ""
        if language not in ("python", "py"):
            continue
        previous = next((ln.strip() for ln in reversed(lines[:start]) if ln.strip()), "")
        illustration = 'title="illustration"' in info or previous == ILLUSTRATION
        indent = len(match["indent"])
        blocks.append((start + 1, "\n".join(ln[indent:] for ln in body), illustration))
    return blocks


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_collector_reads_fences_and_illustration_marks():
    text = (
        "```python\na = 1\n```\n\n```bash\nls\n```\n\n<!-- illustration -->\n```python\nb = 2\n```\n"
        '\n```python title="illustration"\nc = 3\n```\n\n    ```python\n    d = a\n    ```\n'
    )
    assert python_blocks(text) == [
        (1, "a = 1", False),
        (10, "b = 2", True),
        (14, "c = 3", True),
        (18, "d = a", False),
    ]


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_page_code_runs(page, tmp_path, monkeypatch):
    blocks = [(line, code) for line, code, skip in python_blocks(page.read_text()) if not skip]
    if not blocks:
        pytest.skip(f"{page.name}: no Python blocks to run")
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)  # files a page writes land in a temporary directory
    namespace = {"__name__": f"docs_{page.stem}"}
    known = []
    for line, code in blocks:
        reason = next((why for start, why in KNOWN_BROKEN.items() if code.startswith(start)), None)
        try:
            exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)
        except Exception:
            if reason is not None:
                known.append(f"line {line}: {reason}")
                continue
            pytest.fail(
                f"{page.relative_to(ROOT)}: the Python block at line {line} failed:\n"
                + traceback.format_exc(limit=-3),
                pytrace=False,
            )
        else:
            assert reason is None, f"{page.name}:{line} runs now: remove it from KNOWN_BROKEN"
    assert os.getcwd() == str(tmp_path), "a docs block changed the working directory"
    if known:
        pytest.xfail("; ".join(known))
