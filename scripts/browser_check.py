#!/usr/bin/env python3
"""Open an HTML report in headless Chromium, save a screenshot, fail on any error.

    python scripts/browser_check.py REPORT.html --screenshot OUT.png

A command line over `klbudget.report.browser` (Playwright driving the system's Chromium),
which lists the checks.

Exit status: 0 pass, 1 the page failed a check, 2 Playwright or Chromium is missing or
Chromium did not answer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from klbudget.report.browser import BrowserError, BrowserUnavailableError, describe, inspect_page


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", type=Path, help="the HTML file to open")
    ap.add_argument("--screenshot", type=Path, help="where to save a full-page PNG")
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
    try:
        result = inspect_page(
            args.report, args.screenshot, args.expect_text, args.chromium, args.timeout
        )
    except (BrowserUnavailableError, BrowserError) as e:
        print(f"browser_check: {e}", file=sys.stderr)
        return 2
    for line in result.console:
        print(f"  {line}")
    print(f"browser_check: {describe(result)}")
    if result.problems:
        for problem in result.problems:
            print(f"FAIL: {problem}", file=sys.stderr)
        return 1
    shot = f", screenshot {args.screenshot}" if args.screenshot else ""
    print(f"browser_check: OK{shot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
