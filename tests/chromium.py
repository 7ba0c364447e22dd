"""A minimal headless-Chromium client over the DevTools protocol, for the HTML checks.

Chromium runs with ``--remote-debugging-pipe``: it reads protocol commands from file
descriptor 3 and writes replies and events to descriptor 4, each a JSON object ended by a
NUL byte. No WebDriver and no WebSocket library is needed, only the browser (Debian's
``chromium``; ``make env`` installs it when missing).

``python tests/chromium.py HTML_DIR SHOTS_DIR`` screenshots every page of a built book at
1280 px wide (full page) into SHOTS_DIR, to look at what a reader sees.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WIDTH, HEIGHT = 1280, 900


def executable() -> str | None:
    """The Chromium binary on PATH (Debian: ``chromium``), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with one page; ``open(url)`` loads a page and waits for its
    load event, ``evaluate(js)`` returns a JavaScript expression's value (promises awaited),
    ``screenshot(path)`` writes a full-page PNG."""

    def __init__(self, width: int = WIDTH, height: int = HEIGHT, timeout: float = 60.0):
        binary = executable()
        if binary is None:
            raise FileNotFoundError("no chromium on PATH (Debian: apt-get install chromium)")
        self.timeout = timeout
        self.width, self.height = width, height
        self._profile = tempfile.mkdtemp(prefix="clmerge-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the browser's descriptors 3 (commands in) and 4 (messages out)
        self._proc = subprocess.Popen(
            [binary, "--headless=new", "--remote-debugging-pipe", "--no-sandbox",
             "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--no-default-browser-check", "--hide-scrollbars", "--mute-audio",
             f"--user-data-dir={self._profile}", f"--window-size={width},{height}",
             "about:blank"],
            pass_fds=(3, 4), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=lambda: (os.dup2(to_browser_r, 3), os.dup2(from_browser_w, 4)))
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict] = []
        target = self._call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self._call("Target.attachToTarget", targetId=target,
                                   flatten=True)["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    # ------------------------------------------------------------ protocol
    def _send(self, message: dict) -> None:
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")

    def _receive(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise ConnectionError("chromium closed its pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def _call(self, method: str, session: str | None = None, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self._send(message)
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def call(self, method: str, **params) -> dict:
        return self._call(method, self._session, **params)

    def _wait_event(self, method: str) -> dict:
        while True:
            for i, event in enumerate(self._events):
                if event.get("method") == method:
                    return self._events.pop(i)
            self._events.append(self._receive())

    # ------------------------------------------------------------ pages
    def open(self, url: str) -> None:
        self._events.clear()
        self.call("Page.navigate", url=url)
        self._wait_event("Page.loadEventFired")

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True,
                           returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: str | os.PathLike) -> None:
        """The whole page at the window's width: the window is made as tall as the page
        for the capture, then set back."""
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=height,
                  deviceScaleFactor=1, mobile=False)
        try:
            self.evaluate("window.scrollTo(0, 0)")
            data = self.call("Page.captureScreenshot", format="png")["data"]
        finally:
            self.call("Emulation.setDeviceMetricsOverride", width=self.width,
                      height=self.height, deviceScaleFactor=1, mobile=False)
        Path(path).write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self._call("Browser.close")
        except (ConnectionError, RuntimeError, OSError, TimeoutError):
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python tests/chromium.py HTML_DIR SHOTS_DIR", file=sys.stderr)
        return 2
    html, shots = Path(argv[0]).resolve(), Path(argv[1])
    shots.mkdir(parents=True, exist_ok=True)
    with Browser() as browser:
        for page in sorted(html.rglob("*.html")):
            rel = page.relative_to(html)
            if any(p.startswith("_") for p in rel.parts) or rel.name in ("genindex.html",
                                                                        "search.html"):
                continue
            browser.open(page.as_uri())
            browser.evaluate(MATH_READY)
            out = shots / (str(rel.with_suffix("")).replace("/", "__") + ".png")
            browser.screenshot(out)
            print(out)
    return 0


# Resolves once MathJax (2 or 3), if the page loads it, has typeset the page.
MATH_READY = """
new Promise(resolve => {
  const done = () => resolve(true);
  const t0 = Date.now();
  (function poll() {
    const mj = window.MathJax;
    if (!document.querySelector('.math')) return done();
    if (mj && mj.Hub && mj.Hub.queue) { mj.Hub.Queue(done); return; }
    if (mj && mj.startup && mj.startup.promise) { mj.startup.promise.then(done); return; }
    if (Date.now() - t0 > 20000) return done();
    setTimeout(poll, 100);
  })();
})
"""


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
