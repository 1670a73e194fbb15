#!/usr/bin/env bash
# Run the SDK compatibility suite: the real `openai` and `anthropic` Python
# SDKs against a live tappass-gateway in front of tappass-mock-llm.
#
# Env:
#   TAPPASS_VENV     virtualenv to create/reuse (default ~/.cache/tappass/venv)
#   TAPPASS_BIN_DIR  directory holding tappass-gateway and tappass-mock-llm
#                    (default ${CARGO_TARGET_DIR:-~/.cache/tappass/target}/debug)
# Extra arguments are passed to pytest.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${TAPPASS_VENV:-$HOME/.cache/tappass/venv}"
req="$here/requirements.txt"

if ! command -v python3 >/dev/null 2>&1; then
    echo "run.sh: python3 is not installed" >&2
    exit 2
fi

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    if ! python3 -m venv "$venv" >/tmp/tappass-venv.$$.log 2>&1; then
        cat /tmp/tappass-venv.$$.log >&2 || true
        rm -f /tmp/tappass-venv.$$.log
        rm -rf "$venv"
        echo "run.sh: 'python3 -m venv' failed: the python3-venv package is probably missing" >&2
        echo "run.sh: install it (Debian: apt-get install -y python3-venv) and run again" >&2
        exit 2
    fi
    rm -f /tmp/tappass-venv.$$.log
fi

py="$venv/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONDONTWRITEBYTECODE=1
# Install only when a pinned requirement is missing or at another version.
if ! "$py" - "$req" <<'PY'
import sys
from importlib import metadata
ok = True
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, _, version = line.partition("==")
    try:
        if version and metadata.version(name.strip()) != version.strip():
            ok = False
    except metadata.PackageNotFoundError:
        ok = False
sys.exit(0 if ok else 1)
PY
then
    echo "run.sh: installing $(grep -cv '^\s*\(#\|$\)' "$req") pinned packages into $venv" >&2
    "$py" -m pip install -q -r "$req"
fi

cd "$root"
set +e
"$py" -m pytest -q -p no:cacheprovider tests/sdk "$@"
code=$?
set -e
exit "$code"
