#!/usr/bin/env bash
# Runs the independent Python ADS client (grpcio + xds-protos) against a
# TapPass xDS server. Creates a venv under $HOME/.cache/tappass/ with the
# pinned requirements on first use (and when they change).
# Usage: run.sh --addr HOST:PORT --descriptors FILE --pubkey HEX
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! command -v python3 >/dev/null 2>&1; then
    echo "run.sh: python3 is required for the xDS wire-compatibility test (apt-get install python3 python3-venv)" >&2
    exit 2
fi
venv="${TAPPASS_XDS_PY_VENV:-$HOME/.cache/tappass/xds-py-venv}"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv" >&2 || {
        echo "run.sh: python3 -m venv failed (install python3-venv)" >&2
        exit 2
    }
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
    echo "$want" > "$stamp"
fi
exec "$venv/bin/python" "$here/ads_client.py" "$@"
