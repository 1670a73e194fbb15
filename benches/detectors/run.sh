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
if [ ! -f "$cache/x/ps_fuzz_injections.jsonl" ]; then
  # prompt-security-fuzzer ships its injection texts as Parquet: read them
  # with pyarrow in a venv of the cache, once, into JSON lines.
  if [ ! -d "$cache/x/prompt_security_fuzzer-2.1.1-py3-none-any" ]; then
    pip download --no-deps -d "$cache/pypi" prompt-security-fuzzer==2.1.1 >/dev/null
    unzip -qo "$cache/pypi/prompt_security_fuzzer-2.1.1-py3-none-any.whl" -d "$cache/x/prompt_security_fuzzer-2.1.1-py3-none-any"
  fi
  if [ ! -x "$cache/venv/bin/python" ]; then
    python3 -m venv "$cache/venv"
    "$cache/venv/bin/pip" install -q pyarrow==26.0.1
  fi
  "$cache/venv/bin/python" - "$cache" <<'PY'
import json, sys
import pyarrow.parquet as pq
cache = sys.argv[1]
t = pq.read_table(f"{cache}/x/prompt_security_fuzzer-2.1.1-py3-none-any/ps_fuzz/attack_data/prompt_injections_for_base64.parquet")
with open(f"{cache}/x/ps_fuzz_injections.jsonl", "w") as f:
    for row in t.to_pylist():
        f.write(json.dumps({"text": row["text"], "label": row["label"]}) + "\n")
PY
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tappass/target}"
cd "$here/../.."
cargo run --release -q -p tappass-bench-detectors -- all --corpora "$cache"
