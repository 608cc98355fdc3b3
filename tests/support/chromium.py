"""Headless Chromium for the report pages: a page's DOM after its scripts ran, opened from a file://
URL with every host unresolvable (a chart that needed the network would not draw), and what plotly
drew into it. Chromium is Debian's `chromium` package (scripts/setup.sh installs it)."""

from __future__ import annotations

import html
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

RENDER_TIMEOUT_S = 120


def chromium_dom(page: Path, profile: Path) -> tuple[str, float]:
    """The DOM of `page` after its scripts ran in headless Chromium, and the seconds it took."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail(
            "chromium is not installed; scripts/setup.sh installs Debian's package: apt-get install -y chromium"
        )
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.resolve().as_uri(),
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=RENDER_TIMEOUT_S, check=False)
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, elapsed


class RenderedPage(HTMLParser):
    """Collects the figure divs' classes and the texts plotly drew into its SVGs."""

    def __init__(self) -> None:
        super().__init__()
        self.figure_classes: dict[str, str] = {}
        self.svg_texts: set[str] = set()
        self.traces = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        figure_id = found.get("id") or ""
        if tag == "div" and figure_id.startswith("fig-"):
            self.figure_classes[figure_id] = found.get("class") or ""
        unformatted = found.get("data-unformatted")
        if tag == "text" and unformatted:
            self.svg_texts.add(html.unescape(unformatted))
        if tag == "g" and "trace" in (found.get("class") or "").split():
            self.traces += 1


def plotly_drawing(dom: str) -> RenderedPage:
    """What plotly drew into a page's DOM."""
    parser = RenderedPage()
    parser.feed(dom)
    return parser
