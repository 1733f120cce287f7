#!/usr/bin/env bash
# One command for a fresh machine: installs the test dependencies into ./.venv and runs the whole
# suite. Extra arguments go to pytest (e.g. `bash tests/run.sh tests/unit -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${HIRES_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --disable-pip-version-check torch==2.13.0
"$py" -m pip install -q --disable-pip-version-check -r tests/requirements.txt
"$py" -m pip install -q --disable-pip-version-check --no-deps stable-diffusion-sdkit==2.1.5
exec "$py" -m pytest "$@"
