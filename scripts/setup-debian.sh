#!/usr/bin/env bash
# Installs the system packages TapPass builds and tests with, on Debian or
# Ubuntu. Idempotent: does nothing when everything is present.
set -euo pipefail

packages=(
  build-essential pkg-config cmake clang libclang-dev
  libhyperscan-dev librocksdb-dev
  python3 python3-venv python3-pip ca-certificates curl
)
case "$(uname -m)" in
  aarch64|arm64) packages=("${packages[@]/libhyperscan-dev/libvectorscan-dev}") ;;
esac

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "Installing system packages: ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "error: run as root or install sudo" >&2; exit 1; }
    sudo="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "error: cargo is not installed. Install the Rust toolchain (https://rustup.rs), then run this again." >&2
  exit 1
fi
