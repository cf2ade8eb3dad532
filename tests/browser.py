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
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from detector.tasks.pages import BROWSERS, HEADLESS

BROWSER_NAMES = BROWSERS
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
            *HEADLESS,
            "--hide-scrollbars",
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


class Chromium:
    """Headless Chromium driven over the DevTools protocol through a pipe
    (``--remote-debugging-pipe``: commands in on fd 3, answers and events out on fd 4, each a
    JSON text ended by a NUL), so that a test can sign in, click and read the page as a user
    would, with no WebSocket library. Every wait is bounded by ``timeout`` seconds; use as a
    context manager (the browser and its helpers end with it)."""

    def __init__(self, timeout: float = TIMEOUT_S) -> None:
        browser = find_chromium()
        if browser is None:
            raise BrowserError(SKIP_REASON)
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="copyscan-chromium-")
        to_browser, self._commands = os.pipe()
        self._answers, from_browser = os.pipe()

        def attach() -> None:  # in the child, before exec: the pipe ends become fds 3 and 4
            import fcntl

            commands = fcntl.fcntl(to_browser, fcntl.F_DUPFD, 10)
            answers = fcntl.fcntl(from_browser, fcntl.F_DUPFD, 10)
            os.dup2(commands, 3)
            os.dup2(answers, 4)

        self.proc = subprocess.Popen(
            [
                browser,
                *HEADLESS,
                "--remote-debugging-pipe",
                f"--user-data-dir={self._profile.name}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=attach,
            close_fds=False,
            start_new_session=True,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._next = 0
        self._buffer = b""
        self.events: list[dict] = []

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command; its result (raises :class:`BrowserError` on an error answer)."""
        import json

        self._next += 1
        message: dict = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            for answer in self._read(deadline):
                if answer.get("id") == self._next:
                    if "error" in answer:
                        raise BrowserError(f"{method}: {answer['error']}")
                    return answer.get("result", {})
                self.events.append(answer)

    def wait_event(self, method: str, session: str, since: int) -> dict:
        """The first event ``method`` of ``session`` from ``self.events[since:]`` on, read
        from the pipe as it comes."""
        deadline = time.monotonic() + self.timeout
        seen = since
        while True:
            for event in self.events[seen:]:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            seen = len(self.events)
            self.events.extend(self._read(deadline))

    def _read(self, deadline: float) -> list[dict]:
        import json
        import select

        left = deadline - time.monotonic()
        if left <= 0 or not select.select([self._answers], [], [], left)[0]:
            raise BrowserError(f"headless Chromium did not answer within {self.timeout:.0f} s")
        chunk = os.read(self._answers, 1 << 20)
        if not chunk:
            raise BrowserError("headless Chromium closed its DevTools pipe")
        self._buffer += chunk
        *whole, self._buffer = self._buffer.split(b"\0")
        return [json.loads(m) for m in whole if m]

    def page(self) -> Page:
        """A new tab."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=session)
        return Page(self, session)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (BrowserError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for fd in (self._commands, self._answers):
            try:
                os.close(fd)
            except OSError:
                pass
        self._profile.cleanup()


class Page:
    """One tab of a :class:`Chromium`."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser = browser
        self.session = session

    def goto(self, url: str) -> None:
        """Load ``url`` and wait until the document (and what it loads) is complete."""
        since = len(self.browser.events)
        self.browser.send("Page.navigate", {"url": url}, self.session)
        self.browser.wait_event("Page.loadEventFired", self.session, since)

    def evaluate(self, expression: str) -> object:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.browser.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            self.session,
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 20.0) -> object:
        """Evaluate until the expression is truthy (a page in the middle of loading is tried
        again); its value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
                if value:
                    return value
            except BrowserError:
                pass  # the page was being replaced by the next one
            if time.monotonic() > deadline:
                raise BrowserError(f"still false after {timeout:.0f} s: {expression}")
            time.sleep(0.1)

    def console(self) -> list[str]:
        """The page's console messages and browser log entries (CSP violations among them)."""
        out = []
        for event in self.browser.events:
            if event.get("sessionId") != self.session:
                continue
            params = event.get("params", {})
            if event.get("method") == "Log.entryAdded":
                out.append(params.get("entry", {}).get("text", ""))
            elif event.get("method") == "Runtime.consoleAPICalled":
                out.append(" ".join(str(a.get("value", "")) for a in params.get("args", [])))
        return out

    def screenshot(self, png_path: Path, size: tuple[int, int] = (1280, 1000)) -> Path:
        """Save a PNG of the tab at ``size`` (width, height) CSS pixels; returns ``png_path``."""
        import base64

        metrics = {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False}
        self.browser.send("Emulation.setDeviceMetricsOverride", metrics, self.session)
        data = self.browser.send("Page.captureScreenshot", {"format": "png"}, self.session)["data"]
        png_path.parent.mkdir(parents=True, exist_ok=True)
        png_path.write_bytes(base64.b64decode(data))
        return png_path
