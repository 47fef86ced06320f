"""Open an HTML report in headless Chromium and list everything wrong with it.

Playwright (the `dev` extra) drives the system's Chromium (Debian's `chromium` package, or
any binary given explicitly); Playwright's own browser downloads are never used. The page
fails the check when it

- logs a console error or assertion (including the browser's own log errors, e.g. a
  Content-Security-Policy violation or a resource that failed to load),
- throws an uncaught exception or opens a JavaScript dialog (a hostile
  `<script>alert(1)</script>` that ran),
- requests anything but local files and `data:`/`blob:` URLs (the report must be
  self-contained); such requests are aborted before they reach the network,
- has a request that fails, or crashes,
- contains a `<script>` element, an image that did not load or decode, or no text at all,
- does not show one of the expected texts.

A full-page screenshot is taken at a width of 1280 CSS pixels when asked for.

    problems = check_page("report.html", screenshot="report.png", expect_text=["</div>"])
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WIDTH = 1280
HEIGHT = 900  # initial viewport height; the screenshot covers the whole page
MAX_HEIGHT = 16000  # the longest screenshot taken (a single GPU texture)
SETTLE_MS = 500  # after the load event, time for late console messages
CHROMIUM_NAMES = ("chromium", "chromium-browser")
CHROMIUM_ARGS = (
    "--disable-gpu",
    "--disable-dev-shm-usage",  # a small /dev/shm in containers crashes the renderer
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--mute-audio",
)
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")

# Facts about the loaded page, evaluated in it. Every image must have loaded with a size
# and decode; the sources of the ones that did not are listed (cut short).
PAGE_FACTS = """async () => {
  const images = Array.from(document.images);
  const broken = [];
  for (const img of images) {
    let ok = img.complete && img.naturalWidth > 0;
    if (ok) {
      try { await img.decode(); } catch (e) { ok = false; }
    }
    if (!ok) broken.push((img.currentSrc || img.getAttribute('src') || '').slice(0, 60));
  }
  return {
    scripts: document.scripts.length,
    images: images.length,
    broken: broken,
    height: Math.ceil(document.documentElement.scrollHeight),
    title: document.title,
    text: document.body ? document.body.innerText.length : 0,
  };
}"""


class BrowserUnavailableError(RuntimeError):
    """Playwright or Chromium is not installed; the message is one line saying which."""


class BrowserError(RuntimeError):
    """Chromium was found but could not be started or stopped answering."""


@dataclass
class PageCheck:
    """What the check saw: `problems` empty means the page passed."""

    problems: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)  # every console/log line, for the record
    facts: dict[str, Any] = field(default_factory=dict)


def find_chromium(explicit: str | Path | None = None) -> str | None:
    """Path of a Chromium binary: `explicit` (a path or a name on PATH) if it exists, else
    the first of `chromium`, `chromium-browser` on PATH; None when there is none."""
    if explicit:
        if Path(explicit).is_file():
            return str(explicit)
        return shutil.which(str(explicit))
    return next((p for name in CHROMIUM_NAMES if (p := shutil.which(name))), None)


def unavailable(executable: str | Path | None = None) -> str | None:
    """Why the check cannot run here (one line), or None when it can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if find_chromium(executable) is None:
        if executable:
            return f"chromium not found at {executable}"
        return "chromium not found on PATH (Debian: apt-get install -y chromium)"
    return None


def _one_line(text: str, limit: int = 300) -> str:
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
    return line[:limit]


def _is_local(url: str) -> bool:
    return url.startswith(LOCAL_SCHEMES)


def inspect_page(
    html_path: str | Path,
    screenshot: str | Path | None = None,
    expect_text: Iterable[str] = (),
    executable: str | Path | None = None,
    timeout: float = 60.0,
) -> PageCheck:
    """Load `html_path` in headless Chromium, run every check, optionally save a full-page
    PNG to `screenshot`, and return what was seen. Raises BrowserUnavailableError when Playwright
    or Chromium is missing and BrowserError when Chromium does not start or answer."""
    if reason := unavailable(executable):
        raise BrowserUnavailableError(reason)
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    chromium = find_chromium(executable)
    assert chromium is not None
    url = Path(html_path).resolve().as_uri()
    result = PageCheck()
    external: set[str] = set()

    def problem(text: str) -> None:
        result.problems.append(text)

    def block(route: Any) -> None:
        req_url = route.request.url
        if _is_local(req_url):
            route.continue_()
            return
        if req_url not in external:
            external.add(req_url)
            problem(f"external request: {req_url[:200]}")
        route.abort("blockedbyclient")

    def block_socket(ws: Any) -> None:
        problem(f"external request: {ws.url[:200]}")
        ws.close()

    def on_console(msg: Any) -> None:
        where = msg.location.get("url", "") if msg.location else ""
        line = f"console.{msg.type}: {msg.text}" + (f" ({where[:120]})" if where else "")
        result.console.append(line)
        if msg.type in ("error", "assert") and where not in external:  # blocked: reported
            problem(line)

    def on_page_error(exc: Any) -> None:
        name = getattr(exc, "name", "") or "Error"
        problem(f"uncaught exception: {name}: {_one_line(getattr(exc, 'message', exc))}")

    def on_dialog(dialog: Any) -> None:
        problem(f"a JavaScript dialog opened: {dialog.type} {dialog.message!r}")
        dialog.dismiss()  # or the page blocks

    def on_request_failed(req: Any) -> None:
        if req.url not in external:  # blocked ones are reported already
            problem(f"request failed: {req.url[:200]}: {req.failure}")

    ms = timeout * 1000
    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(
                executable_path=chromium,
                headless=True,
                args=list(CHROMIUM_ARGS),
                timeout=ms,
            )
        except PlaywrightError as e:
            raise BrowserError(f"could not start {chromium}: {_one_line(e.message)}") from e
        try:
            context = browser.new_context(
                viewport={"width": WIDTH, "height": HEIGHT},
                device_scale_factor=1,
                service_workers="block",
            )
            context.route("**/*", block)
            context.route_web_socket("**/*", block_socket)
            page = context.new_page()
            page.set_default_timeout(ms)
            page.on("console", on_console)
            page.on("pageerror", on_page_error)
            page.on("dialog", on_dialog)
            page.on("requestfailed", on_request_failed)
            page.on("crash", lambda _page: problem("the page crashed"))
            try:
                page.goto(url, wait_until="load")
            except PlaywrightError as e:
                problem(f"navigation failed: {_one_line(e.message)}")
                return result
            page.wait_for_timeout(SETTLE_MS)

            facts = page.evaluate(PAGE_FACTS)
            result.facts = facts
            if facts["scripts"]:
                problem(f"the page has {facts['scripts']} <script> element(s)")
            if facts["broken"]:
                problem(
                    f"{len(facts['broken'])} of {facts['images']} images did not load or "
                    f"decode: {', '.join(facts['broken'][:5])}"
                )
            if not facts["text"]:
                problem("the page shows no text")
            for want in expect_text:
                if not page.evaluate("t => document.body.innerText.includes(t)", want):
                    problem(f"the page does not show the text {want!r}")

            if screenshot is not None:
                shot = Path(screenshot)
                shot.parent.mkdir(parents=True, exist_ok=True)
                height = max(min(int(facts["height"]), MAX_HEIGHT), 1)
                page.screenshot(
                    path=str(shot),
                    full_page=True,
                    clip={"x": 0, "y": 0, "width": WIDTH, "height": height},
                    timeout=ms,
                )
            page.wait_for_timeout(SETTLE_MS // 2)
        except PlaywrightError as e:
            raise BrowserError(f"chromium stopped answering: {_one_line(e.message)}") from e
        finally:
            browser.close()
    return result


def check_page(
    html_path: str | Path,
    screenshot: str | Path | None = None,
    expect_text: Iterable[str] = (),
    executable: str | Path | None = None,
    timeout: float = 60.0,
) -> list[str]:
    """The problems `inspect_page` finds with the page (empty: it passed)."""
    return inspect_page(html_path, screenshot, expect_text, executable, timeout).problems


def describe(result: PageCheck) -> str:
    """The facts of a check as one JSON line."""
    return json.dumps(result.facts)
