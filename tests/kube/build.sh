#!/usr/bin/env bash
# Builds the test infrastructure ksit's tests run against, from pinned Go modules, into a cache outside the
# clone keyed by the Go files (a second run is a no-op), and prints the folder that holds it:
#   build.sh kube    etcd and kube-apiserver (or $KUBEBUILDER_ASSETS when it holds both, as envtest does)
#   build.sh istio        istioctl, from the pinned istio.io/istio module
#   build.sh istio-crds   Istio's CRDs (crd-all.gen.yaml) from that module: a module download, no build
#   build.sh kubestellar-crds   KubeStellar's BindingPolicy and Binding CRDs from github.com/kubestellar/kubestellar
# Build times go to stderr. Concurrent callers wait for one build (flock).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
what="${1:-}"
cache="${KSIT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ksit-mesh}"

key() { # the inputs of a build: its Go files, the Go version, this script
    (cd "$here/go" && cat "$@" && go version && cat "$here/build.sh") | sha256sum | cut -c1-16
}

built() { # folder, binaries...
    local dir="$1"; shift
    for b in "$@"; do [ -x "$dir/$b" ] || return 1; done
}

build() { # name of the go/ folder, output binary, ldflags
    local src="$1" out="$2" ldflags="$3" start end
    start=$(date +%s)
    (cd "$here/go/$src" && go build -trimpath -ldflags "-s -w $ldflags" -o "$out.tmp" .)
    mv "$out.tmp" "$out"
    end=$(date +%s)
    echo "ksit-kube: built $(basename "$out") in $((end - start)) s" >&2
}

case "$what" in
kube)
    if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
        if built "$KUBEBUILDER_ASSETS" etcd kube-apiserver; then
            echo "$KUBEBUILDER_ASSETS"
            exit 0
        fi
        echo "ksit-kube: KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks etcd or kube-apiserver; building them" >&2
    fi
    # The version kube-apiserver reports (/version) is set at link time, as Kubernetes' own build does.
    k8s=$(cd "$here/go/apiserver" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
    [ -n "$k8s" ] || { echo "ksit-kube: no k8s.io/kubernetes version in go/apiserver/go.mod" >&2; exit 1; }
    dir="$cache/kube-$(key apiserver/go.mod apiserver/go.sum apiserver/main.go etcd/go.mod etcd/go.sum etcd/main.go)"
    mkdir -p "$dir"
    exec 9>"$dir/.lock"
    flock 9
    if ! built "$dir" etcd kube-apiserver; then
        minor=$(echo "$k8s" | cut -d. -f2)
        build etcd "$dir/etcd" ""
        build apiserver "$dir/kube-apiserver" "-X k8s.io/component-base/version.gitVersion=$k8s \
            -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
            -X k8s.io/component-base/version.gitTreeState=clean"
    fi
    echo "$dir"
    ;;
istio)
    dir="$cache/istio-$(key istioctl/go.mod istioctl/go.sum istioctl/main.go)"
    mkdir -p "$dir"
    exec 9>"$dir/.lock"
    flock 9
    if ! built "$dir" istioctl; then
        version=$(cd "$here/go/istioctl" && go list -m -f '{{.Version}}' istio.io/istio)
        build istioctl "$dir/istioctl" "-X istio.io/istio/pkg/version.buildVersion=$version"
    fi
    echo "$dir"
    ;;
istio-crds)
    dir="$cache/istio-crds-$(key istioctl/go.mod)"
    mkdir -p "$dir"
    exec 9>"$dir/.lock"
    flock 9
    if [ ! -s "$dir/crd-all.gen.yaml" ]; then
        # The module's own copy of its CRDs, with their CEL validation rules.
        mod=$(cd "$here/go/istioctl" && go mod download -json istio.io/istio | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
        [ -n "$mod" ] || { echo "ksit-kube: go mod download istio.io/istio gave no folder" >&2; exit 1; }
        cp "$mod/manifests/charts/base/files/crd-all.gen.yaml" "$dir/crd-all.gen.yaml.tmp"
        mv "$dir/crd-all.gen.yaml.tmp" "$dir/crd-all.gen.yaml"
    fi
    echo "$dir"
    ;;
kubestellar-crds)
    # Pinned here: the module is only downloaded, for its CRDs (config/crd/bases).
    version=v0.26.0
    dir="$cache/kubestellar-crds-$version"
    mkdir -p "$dir"
    exec 9>"$dir/.lock"
    flock 9
    if [ ! -s "$dir/kubestellar-crds.yaml" ]; then
        mod=$(cd "$here/go/istioctl" && go mod download -json "github.com/kubestellar/kubestellar@$version" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
        [ -n "$mod" ] || { echo "ksit-kube: go mod download github.com/kubestellar/kubestellar@$version gave no folder" >&2; exit 1; }
        for f in bindingpolicies bindings; do
            echo "---"
            cat "$mod/config/crd/bases/control.kubestellar.io_$f.yaml"
        done > "$dir/kubestellar-crds.yaml.tmp"
        mv "$dir/kubestellar-crds.yaml.tmp" "$dir/kubestellar-crds.yaml"
    fi
    echo "$dir"
    ;;
*)
    echo "usage: $0 kube|istio|istio-crds|kubestellar-crds" >&2
    exit 2
    ;;
esac
