#!/usr/bin/env python3
"""Open an HTML report in headless Chromium, save a screenshot, fail on any error.

    python scripts/browser_check.py REPORT.html --screenshot OUT.png

Talks to Chromium over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON
messages separated by NUL bytes on file descriptors 3 and 4), so no port is opened and no
websocket library is needed; standard library only. The page fails the check when it

- logs a console error or throws an exception (Runtime/Log domains),
- opens a JavaScript dialog (a hostile `<script>alert(1)</script>` that ran),
- requests anything but the file itself and `data:` URLs (the report must be
  self-contained), or a request fails,
- contains a `<script>` element, or an image that did not decode.

Exit status: 0 pass, 1 the page failed a check, 2 Chromium is missing or did not answer.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # root in a container has no user namespaces for the sandbox
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-dev-shm-usage",  # small /dev/shm in containers crashes the renderer
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",
)
WIDTH = 1280
MAX_HEIGHT = 16000  # GPU texture limit of a single capture
# Evaluated in the page after load: facts about the DOM the checks need.
PAGE_FACTS = """JSON.stringify({
  scripts: document.scripts.length,
  images: document.images.length,
  broken: Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length,
  height: Math.ceil(document.documentElement.scrollHeight),
  title: document.title,
  text: document.body ? document.body.innerText.length : 0
})"""


class BrowserError(RuntimeError):
    """Chromium could not be started or stopped answering."""


@dataclass
class Result:
    """What the check saw."""

    errors: list[str] = field(default_factory=list)  # reasons to fail
    console: list[str] = field(default_factory=list)  # every console/log line, for the record
    facts: dict[str, Any] = field(default_factory=dict)


def find_chromium(explicit: str | None = None) -> str | None:
    """Path of a Chromium binary: the given one, else the first found on PATH."""
    if explicit:
        return explicit if Path(explicit).exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if found := shutil.which(name):
            return found
    return None


class Pipe:
    """A DevTools connection over Chromium's debugging pipe."""

    def __init__(self, chromium: str, profile: Path, log: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4; the shell moves the
        # pipe ends there (and only there) before exec-ing the browser.
        script = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}'
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", script, chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            pass_fds=(to_browser_r, from_browser_w),
            start_new_session=True,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._replies: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self._inbox.put(None)  # the browser closed the pipe
                return
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for raw in messages:
                self._inbox.put(json.loads(raw))

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Send one command and wait for its reply; events seen meanwhile are kept."""
        self._next_id += 1
        my_id = self._next_id
        msg: dict[str, Any] = {"id": my_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        # Replies are kept by id: an event handler may send a command of its own meanwhile.
        while my_id not in self._replies:
            self._pump(deadline, f"reply to {method}")
        reply = self._replies.pop(my_id)
        if "error" in reply:
            raise BrowserError(f"{method} failed: {reply['error'].get('message')}")
        return reply.get("result", {})

    def wait_for(self, method: str, timeout: float) -> dict[str, Any]:
        """Wait for an event (or return it if it already came)."""
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events:
                if ev.get("method") == method:
                    return ev
            self._pump(deadline, method)

    def drain(self, seconds: float) -> None:
        """Collect events for a while (late console messages)."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                self._pump(deadline, "events")
        except BrowserError:
            return

    def _pump(self, deadline: float, what: str) -> None:
        """Take one message: a reply is filed by id, an event handled."""
        try:
            msg = self._inbox.get(timeout=max(deadline - time.monotonic(), 0.001))
        except queue.Empty as e:
            raise BrowserError(f"timed out waiting for {what}") from e
        if msg is None:
            self._inbox.put(None)  # stays closed for later readers
            raise BrowserError(f"chromium closed the connection while waiting for {what}")
        if "id" in msg:
            self._replies[msg["id"]] = msg
            return
        self.events.append(msg)
        if msg.get("method") == "Page.javascriptDialogOpening":
            # Dismiss it or the page blocks; the dialog itself is recorded as an error.
            self.send("Page.handleJavaScriptDialog", {"accept": False}, msg.get("sessionId"))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.write(
                self._to_browser,
                json.dumps({"id": 10**9, "method": "Browser.close", "params": {}}).encode() + b"\0",
            )
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)  # the browser's own process group, started above
            self.proc.wait(timeout=10)
        for fd in (self._to_browser, self._from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._log.close()


def _describe(ev: dict[str, Any]) -> tuple[str | None, str | None]:
    """(error, console line) for one DevTools event."""
    method, p = ev["method"], ev.get("params", {})
    if method == "Runtime.consoleAPICalled":
        text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
        line = f"console.{p.get('type')}: {text}"
        return (line if p.get("type") in ("error", "assert") else None), line
    if method == "Runtime.exceptionThrown":
        d = p.get("exceptionDetails", {})
        text = d.get("exception", {}).get("description") or d.get("text", "")
        return f"uncaught exception: {text}", None
    if method == "Log.entryAdded":
        e = p.get("entry", {})
        line = f"log.{e.get('level')} [{e.get('source')}]: {e.get('text')} {e.get('url', '')}"
        return (line if e.get("level") == "error" else None), line
    if method == "Page.javascriptDialogOpening":
        return f"a JavaScript dialog opened: {p.get('type')} {p.get('message')!r}", None
    if method == "Network.requestWillBeSent":
        url = p.get("request", {}).get("url", "")
        if not url.startswith(("file:", "data:")):
            return f"external request: {url[:200]}", None
    if method == "Network.loadingFailed":
        return f"request failed: {p.get('errorText')}", None
    return None, None


def check(
    report: Path,
    screenshot: Path,
    chromium: str,
    timeout: float = 60.0,
    expect_text: tuple[str, ...] = (),
) -> Result:
    """Load `report` in headless Chromium, save a full-page PNG to `screenshot`, and return
    what failed (Result.errors empty: pass). Each `expect_text` must appear in the page's
    rendered text (e.g. hostile markup that must show as text)."""
    result = Result()
    with tempfile.TemporaryDirectory(prefix="browser-check-") as tmp:
        pipe = Pipe(chromium, Path(tmp) / "profile", Path(tmp) / "chromium.log")
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)
            session = pipe.send(
                "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
            )["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": WIDTH, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                session,
            )
            nav = pipe.send("Page.navigate", {"url": report.resolve().as_uri()}, session)
            if nav.get("errorText"):
                result.errors.append(f"navigation failed: {nav['errorText']}")
                return result
            pipe.wait_for("Page.loadEventFired", timeout)
            pipe.drain(0.5)
            facts = json.loads(
                pipe.send(
                    "Runtime.evaluate", {"expression": PAGE_FACTS, "returnByValue": True}, session
                )["result"]["value"]
            )
            result.facts = facts
            if facts["scripts"]:
                result.errors.append(f"the page has {facts['scripts']} <script> element(s)")
            if facts["broken"]:
                result.errors.append(f"{facts['broken']} of {facts['images']} images did not load")
            if not facts["text"]:
                result.errors.append("the page shows no text")
            for want in expect_text:
                found = pipe.send(
                    "Runtime.evaluate",
                    {
                        "expression": f"document.body.innerText.includes({json.dumps(want)})",
                        "returnByValue": True,
                    },
                    session,
                )["result"]["value"]
                if not found:
                    result.errors.append(f"the page does not show the text {want!r}")
            height = max(min(facts["height"], MAX_HEIGHT), 1)
            pipe.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session,
            )
            shot = pipe.send("Page.captureScreenshot", {"format": "png"}, session, timeout)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            pipe.drain(0.3)
        finally:
            pipe.close()
        for ev in pipe.events:
            error, line = _describe(ev)
            if line:
                result.console.append(line)
            if error:
                result.errors.append(error)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", type=Path, help="the HTML file to open")
    ap.add_argument("--screenshot", type=Path, required=True, help="where to save the PNG")
    ap.add_argument("--chromium", help="browser binary (default: chromium on PATH)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per browser step")
    ap.add_argument(
        "--expect-text",
        action="append",
        default=[],
        help="fail unless the rendered page shows this text (repeatable)",
    )
    args = ap.parse_args(argv)
    if not args.report.is_file():
        print(f"browser_check: {args.report}: no such file", file=sys.stderr)
        return 2
    chromium = find_chromium(args.chromium)
    if chromium is None:
        print(
            "browser_check: chromium not found (Debian: apt-get install -y chromium)",
            file=sys.stderr,
        )
        return 2
    try:
        result = check(
            args.report, args.screenshot, chromium, args.timeout, tuple(args.expect_text)
        )
    except BrowserError as e:
        print(f"browser_check: {e}", file=sys.stderr)
        return 2
    for line in result.console:
        print(f"  {line}")
    print(f"browser_check: {json.dumps(result.facts)}")
    if result.errors:
        for err in result.errors:
            print(f"FAIL: {err}", file=sys.stderr)
        return 1
    print(f"browser_check: OK, screenshot {args.screenshot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
