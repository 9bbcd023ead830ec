#!/usr/bin/env bash
# Pins this module to a Kubernetes release: requires k8s.io/kubernetes at VERSION and replaces every staging
# module its go.mod points at ./staging (required there at v0.0.0) by the published v0.MINOR.PATCH, the list
# read from that go.mod, then tidies. Usage: pin.sh v1.37.2
set -euo pipefail
cd "$(dirname "$0")"
version="${1:?usage: pin.sh vMAJOR.MINOR.PATCH}"
staging="v0.${version#v1.}"
gomod=$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
for old in $(go mod edit -json | python3 -c 'import json, sys; print(*(r["Old"]["Path"] for r in json.load(sys.stdin).get("Replace") or []))'); do
    go mod edit -dropreplace "$old"
done
go mod edit -require "k8s.io/kubernetes@$version"
for m in $(sed -n 's#^\s*\(k8s.io/[A-Za-z0-9._-]*\) => ./staging/.*#\1#p' "$gomod"); do
    go mod edit -replace "$m=$m@$staging"
done
go mod tidy
echo "pinned to k8s.io/kubernetes $version (staging modules at $staging)"
