"""Headless Chromium for the tests that need a real browser: find it, load a local page,
dump the DOM after its scripts ran, collect its console messages, take a screenshot.

Tests that need it take the ``needs_chromium`` marker (or the ``chromium`` fixture): both
skip with a clear message where no browser is installed (``make test`` installs Debian's
``chromium`` first)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SKIP_REASON = (
    "headless Chromium not found: install Debian's chromium (make test does this) to run the browser tests"
)
TIMEOUT_S = 60.0  # wall-clock limit of one browser run
VIRTUAL_TIME_MS = 3000  # virtual time the page gets to run its scripts and load its images


class BrowserError(RuntimeError):
    """Chromium could not be found, failed, or ran past its time limit."""


@dataclass(frozen=True)
class PageRun:
    """What one headless run gave: ``stdout`` (the DOM for ``--dump-dom``) and ``console``,
    the page's console messages (CSP violations included), one line each."""

    stdout: str
    console: tuple[str, ...]


def find_chromium() -> str | None:
    """The path of a Chromium or Chrome executable on PATH, or None."""
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


needs_chromium = pytest.mark.skipif(find_chromium() is None, reason=SKIP_REASON)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The browser executable; skips the test where there is none."""
    found = find_chromium()
    if found is None:
        pytest.skip(SKIP_REASON)
    return found


def page_url(html_path: Path | str, fragment: str = "") -> str:
    """The file:// URL of a local page (or an http:// URL as it is), with ``fragment``
    (without '#') when given."""
    if isinstance(html_path, str) and html_path.startswith(("http://", "https://")):
        url = html_path
    else:
        url = Path(html_path).resolve().as_uri()
    return f"{url}#{fragment}" if fragment else url


def run_page(html_path: Path | str, *args: str, fragment: str = "", timeout: float = TIMEOUT_S) -> PageRun:
    """Load a local page in headless Chromium with extra command-line ``args`` (e.g.
    ``--dump-dom``); a fresh profile each time, so that runs never share state."""
    browser = find_chromium()
    if browser is None:
        raise BrowserError(SKIP_REASON)
    with tempfile.TemporaryDirectory(prefix="copyscan-chromium-") as profile:
        command = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--hide-scrollbars",
            "--mute-audio",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            f"--virtual-time-budget={VIRTUAL_TIME_MS}",
            *args,
            page_url(html_path, fragment),
        ]
        stdout, stderr, code = _run(command, timeout)
    if code != 0:
        raise BrowserError(f"{Path(browser).name} exited with {code}: {stderr[-2000:]}")
    console = tuple(line for line in stderr.splitlines() if ":CONSOLE" in line)
    return PageRun(stdout, console)


def _run(command: list[str], timeout: float) -> tuple[str, str, int]:
    """Run ``command`` in its own process group; on timeout, end that group (Chromium's
    helpers included) and raise."""
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as e:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise BrowserError(f"headless Chromium ran past {timeout:.0f} s on {command[-1]}") from e
    return stdout, stderr, proc.returncode


def dump_dom(html_path: Path | str, fragment: str = "", timeout: float = TIMEOUT_S) -> str:
    """The page's DOM as HTML after its scripts ran (``--dump-dom``); ``fragment`` is the
    URL hash without '#'."""
    return run_page(html_path, "--dump-dom", fragment=fragment, timeout=timeout).stdout


def screenshot(
    html_path: Path | str, png_path: Path, size: tuple[int, int] = (1280, 1000), timeout: float = TIMEOUT_S
) -> Path:
    """Save a PNG of the page's first ``size`` (width, height) pixels; returns ``png_path``."""
    png_path = Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.unlink(missing_ok=True)
    run_page(html_path, f"--window-size={size[0]},{size[1]}", f"--screenshot={png_path}", timeout=timeout)
    if not png_path.is_file():
        raise BrowserError(f"headless Chromium wrote no screenshot to {png_path}")
    return png_path
