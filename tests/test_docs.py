"""The documentation site builds with --strict (broken references, API pages that lost their target fail)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
                    reason="mkdocs/mkdocstrings not installed (pip install -e '.[docs]')")
def test_mkdocs_build_strict(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "load_pair" in api and "make_trra_trainer" in api and "thinkctl_lambda" in api


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None or importlib.util.find_spec("PIL") is None,
                    reason="needs Chromium (apt-get install -y chromium) and Pillow")
def test_the_site_renders_in_a_headless_browser(tmp_path):
    """docs/screenshot.sh: the quickstart, the InRa page and the API reference render, not blank."""
    proc = subprocess.run(["bash", str(ROOT / "docs" / "screenshot.sh"), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["api.png", "inra.png", "quickstart.png"]
    assert proc.stdout.count(": ok") == 3
