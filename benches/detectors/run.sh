#!/usr/bin/env bash
# Reproduce benches/detectors/RESULTS.md: fetch the registry corpora into a
# cache outside the repo, then run the measurement in release mode.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${TAPPASS_CORPORA:-$HOME/.cache/tappass/corpora}"
mkdir -p "$cache/pypi" "$cache/x"
if [ ! -d "$cache/x/spikee-0.9.2-py3-none-any" ]; then
  pip download --no-deps -d "$cache/pypi" spikee==0.9.2 >/dev/null
  unzip -qo "$cache/pypi/spikee-0.9.2-py3-none-any.whl" -d "$cache/x/spikee-0.9.2-py3-none-any"
fi
if [ ! -d "$cache/x/promptfoo/package" ]; then
  mkdir -p "$cache/x/promptfoo"
  (cd "$cache/x/promptfoo" && npm pack -q promptfoo@0.123.1 >/dev/null && tar xzf promptfoo-0.123.1.tgz)
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tappass/target}"
cd "$here/../.."
cargo run --release -q -p tappass-bench-detectors -- all --corpora "$cache"
