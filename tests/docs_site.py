"""Build the MkDocs site once per source state, shared by the docs tests (not a test file).

The site is built with ``mkdocs build --strict`` into a directory under the system temp
directory named by a hash of ``mkdocs.yml``, ``docs/`` and ``fnn/``: pytest-xdist workers
that need it wait on a file lock, and the second one reuses the first one's build.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NEEDED = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def require_mkdocs() -> None:
    """Skip the calling test when the ``docs`` extra is not installed."""
    missing = [m for m in NEEDED if importlib.util.find_spec(m.split(".")[0]) is None]
    if not missing and importlib.util.find_spec("mkdocstrings_handlers.python") is None:
        missing = ["mkdocstrings-python"]
    if missing:
        pytest.skip(f"docs extra not installed (missing {', '.join(missing)})")


def _source_hash() -> str:
    digest = hashlib.sha256()
    files = [
        ROOT / "mkdocs.yml",
        *sorted((ROOT / "docs").rglob("*")),
        *sorted((ROOT / "fnn").rglob("*.py")),
    ]
    for path in files:
        if path.is_file():
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build() -> tuple[Path, str, int]:
    """``(site directory, build log, exit code)`` of ``mkdocs build --strict`` on this tree."""
    require_mkdocs()
    base = Path(tempfile.gettempdir()) / f"fnn_docs_site_{_source_hash()}"
    base.mkdir(exist_ok=True)
    with open(base / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result_file = base / "result.json"
        if not result_file.exists():
            env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "JAX_PLATFORMS": "cpu"}
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "mkdocs",
                    "build",
                    "--strict",
                    "-q",
                    "-d",
                    str(base / "site"),
                ],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            result_file.write_text(
                json.dumps({"log": proc.stdout + proc.stderr, "returncode": proc.returncode})
            )
        result = json.loads(result_file.read_text())
    return base / "site", result["log"], result["returncode"]


def built_site() -> Path:
    """The built site's directory; fails the test when the strict build failed."""
    site, log, code = build()
    assert code == 0, f"mkdocs build --strict failed:\n{log[-4000:]}"
    return site


def inventory(site: Path) -> dict[str, str]:
    """Identifier -> page URL from the site's Sphinx-style ``objects.inv`` (mkdocstrings)."""
    data = (site / "objects.inv").read_bytes()
    body = zlib.decompress(data.split(b"\n", 4)[4]).decode()
    out = {}
    for line in body.splitlines():
        name, _role, _prio, uri, *_ = line.split(" ")
        out[name] = uri.replace("$", name)
    return out
