"""A reader's browser for the tests: headless Chromium driven over its DevTools protocol.

    with Browser() as browser:
        page = browser.page("http://127.0.0.1:8000/05_what_was_learned.html")
        page.evaluate("document.title")
        page.press("ArrowLeft", selector=".noUi-handle")
        png = page.screenshot(clip)
        page.exceptions          # uncaught JavaScript exceptions since the page opened

It starts Chromium as the project's machines allow (no sandbox as root, no GPU, no background
networking, a fresh profile), talks to one tab over a websocket (``websocket-client``) and keeps
every ``Runtime.exceptionThrown`` event, so a test can fail on any uncaught exception.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Page:
    """One tab: send DevTools commands, keep the events that matter."""

    def __init__(self, ws_url: str, timeout: float = 30.0):
        import websocket   # websocket-client
        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self.next_id = 0
        self.exceptions: list[str] = []
        self.console_errors: list[str] = []
        self.loaded = False
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")

    def _handle(self, message: dict) -> None:
        method = message.get("method")
        if method == "Runtime.exceptionThrown":
            details = message["params"]["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text", "")
            self.exceptions.append(text.split("\n")[0])
        elif method == "Log.entryAdded" and message["params"]["entry"]["level"] == "error":
            self.console_errors.append(message["params"]["entry"]["text"])
        elif method == "Page.loadEventFired":
            self.loaded = True

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        ident = self.next_id
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._handle(message)

    def pump(self, seconds: float) -> None:
        """Let the page run for ``seconds``, collecting events."""
        end = time.monotonic() + seconds
        self.ws.settimeout(0.2)
        try:
            while time.monotonic() < end:
                try:
                    self._handle(json.loads(self.ws.recv()))
                except Exception:   # a recv timeout: nothing arrived
                    pass
        finally:
            self.ws.settimeout(30.0)

    def open(self, url: str, settle: float = 4.0, timeout: float = 60.0) -> None:
        """Navigate and wait for the load event, then ``settle`` seconds (widgets render late)."""
        self.loaded = False
        self.send("Page.navigate", url=url)
        end = time.monotonic() + timeout
        while not self.loaded and time.monotonic() < end:
            self.pump(0.5)
        if not self.loaded:
            raise TimeoutError(f"{url} did not finish loading in {timeout} s")
        self.pump(settle)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def press(self, key: str, code: str | None = None, key_code: int | None = None) -> None:
        """Press and release ``key`` in the focused element."""
        codes = {"ArrowLeft": 37, "ArrowRight": 39, "Home": 36, "End": 35}
        params = dict(key=key, code=code or key, windowsVirtualKeyCode=key_code or codes.get(key, 0))
        self.send("Input.dispatchKeyEvent", type="keyDown", **params)
        self.send("Input.dispatchKeyEvent", type="keyUp", **params)

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, clip: dict | None = None) -> bytes:
        import base64
        params = {"format": "png"}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        return base64.b64decode(self.send("Page.captureScreenshot", **params)["data"])

    def close(self) -> None:
        self.ws.close()


class Browser:
    """Headless Chromium with the DevTools protocol on a free loopback port."""

    def __init__(self, width: int = 1280, height: int = 1600):
        self.profile = tempfile.mkdtemp(prefix="odc-chromium-")
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={self.profile}",
             f"--remote-debugging-port={self.port}", "--remote-allow-origins=*",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/version", timeout=2)
                break
            except OSError:
                if time.monotonic() > end or self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError("Chromium did not start its DevTools endpoint")
                time.sleep(0.3)

    def page(self, url: str | None = None, settle: float = 4.0) -> Page:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?about:blank",
                                         method="PUT")
        target = json.loads(urllib.request.urlopen(request, timeout=10).read())
        page = Page(target["webSocketDebuggerUrl"])
        if url is not None:
            page.open(url, settle=settle)
        return page

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def available() -> bool:
    return Path(CHROMIUM).exists()
