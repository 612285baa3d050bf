# itproxy: the two set-up commands are `make up` and `make test`.
CARGO ?= cargo
# Extra arguments for `itproxy up`, e.g. make up ARGS="--http 127.0.0.1:8080"
ARGS ?=
# cargo-fuzz targets (fuzz/fuzz_targets/) and how long each runs in `make fuzz-smoke` / `make fuzz`.
FUZZ_TARGETS := http_request http_response chunked dns_query config api_body mock_files
FUZZ_SMOKE_SECONDS ?= 10
FUZZ_SECONDS ?= 60
# The targets are safe Rust end to end: AddressSanitizer would slow building and running for
# nothing; panics, overflows (debug assertions are on), hangs and OOMs are still caught.
FUZZ_FLAGS := --sanitizer none
# Smoke runs use a debug build: on a fresh machine it compiles in a fraction of the optimised
# build's time, and ten seconds of fuzzing need no speed. `make fuzz` builds optimised.
FUZZ_SMOKE_FLAGS := $(FUZZ_FLAGS) --dev

# $(call fuzz_all,FLAGS,SECONDS): build every target once, run each for SECONDS, then fail
# naming the ones that crashed.
define fuzz_all
	cargo +nightly fuzz build $(1)
	@failed=; for t in $(FUZZ_TARGETS); do \
	  echo "== fuzz $$t ($(2) s)"; \
	  cargo +nightly fuzz run $(1) $$t -- -max_total_time=$(2) || failed="$$failed $$t"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz targets that failed:$$failed (inputs in fuzz/artifacts/)" >&2; exit 1; fi
endef

# The Python client's suite runs in this venv, with the package installed as users install it.
PYTHON ?= python3
PY_VENV := target/python-venv
PY_RESULTS := target/python-tests.xml
EXAMPLE_RESULTS := target/example-tests.xml

# Fails unless the pytest run whose JUnit report is $(1) ran a test (all skipped counts as
# none); $(2) names the suite.
define tests_ran
$(PY_VENV)/bin/python -c 'import sys, xml.etree.ElementTree as E; \
  s = E.parse("$(1)").getroot(); s = s if s.tag == "testsuite" else s[0]; \
  ran = int(s.get("tests")) - int(s.get("skipped")); \
  print(f"$(2): {ran} tests ran"); sys.exit(0 if ran > 0 else "$(2): no test ran")'
endef

.PHONY: all deps build up test lint unit bench clean fuzz fuzz-smoke fuzz-tools python-test python-test-venv example-test

all: build

deps:
	@scripts/install-deps.sh

build: deps
	$(CARGO) build --release --locked

## Build and run itproxy in the foreground on its embedded defaults (HTTP on 127.0.0.1:80).
up: build
	./target/release/itproxy up $(ARGS)

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

## The whole suite: formatting, lints, unit and integration tests (real binary, loopback only),
## the Python client's tests, the shipped example config, then a few seconds of each fuzz target.
## Everything is tested in the release profile, against the binary `make up` runs: the two
## share one build (and Cargo.toml unifies the dependencies' features between them), so either
## command after the other compiles nothing again.
test: lint
	@scripts/install-deps.sh --python-tests
	$(CARGO) test --release --workspace --locked
	$(MAKE) python-test
	$(MAKE) example-test
	$(CARGO) run --release --locked --quiet -- check-config examples/itproxy.toml
	$(CARGO) run --release --locked --quiet -- check-config examples/shop/itproxy.toml
	$(MAKE) fuzz-smoke

## The Python client (clients/python) and its pytest plugin: type-checked (mypy --strict), and
## tested with pytest against the
## real daemon, real Docker (images built here) and headless Chromium. Fails when a test fails
## or when none ran (all skipped counts as none).
python-test: python-test-venv
	$(PY_VENV)/bin/mypy --strict --cache-dir target/mypy-cache clients/python/src/itproxy
	cd clients/python && ITPROXY_BIN=$(CURDIR)/target/release/itproxy \
	  $(CURDIR)/$(PY_VENV)/bin/pytest -q -p no:cacheprovider -rs --junitxml=$(CURDIR)/$(PY_RESULTS) tests
	@$(call tests_ran,$(PY_RESULTS),python client)

## The production-shaped example (examples/shop: PostgreSQL, Redis, Django api + worker, nginx
## front end, all built from a Debian base made by debootstrap) driven by its pytest suite:
## prod URLs from the host, the containers and Chromium, data reset per test, a restart under
## load. Fails when a test fails or when none ran.
example-test: python-test-venv
	cd examples/shop && ITPROXY_BIN=$(CURDIR)/target/release/itproxy \
	  $(CURDIR)/$(PY_VENV)/bin/pytest -q -p no:cacheprovider -rs --junitxml=$(CURDIR)/$(EXAMPLE_RESULTS) tests
	@$(call tests_ran,$(EXAMPLE_RESULTS),shop example)

## The release build and a venv with the Python client and its test tools.
python-test-venv: deps
	@scripts/install-deps.sh --python-tests
	$(CARGO) build --release --locked
	test -x $(PY_VENV)/bin/pip || $(PYTHON) -m venv $(PY_VENV)
	$(PY_VENV)/bin/pip install -q --disable-pip-version-check './clients/python[test]'

fuzz-tools:
	@rustup toolchain list | grep -q nightly || { echo 'cargo-fuzz needs a nightly toolchain: run `rustup toolchain install nightly`' >&2; exit 1; }
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked

## Each fuzz target for FUZZ_SMOKE_SECONDS from its seed corpus (fuzz/corpus/<target>).
## One build of every target first; `cargo fuzz run` then finds them up to date.
fuzz-smoke: deps fuzz-tools
	$(call fuzz_all,$(FUZZ_SMOKE_FLAGS),$(FUZZ_SMOKE_SECONDS))

## Each fuzz target for FUZZ_SECONDS; crashes land in fuzz/artifacts/<target>/.
fuzz: deps fuzz-tools
	$(call fuzz_all,$(FUZZ_FLAGS),$(FUZZ_SECONDS))

## Side-by-side benchmarks, each in one run: HTTP (direct vs itproxy vs nginx), DNS (itproxy vs
## dnsmasq vs Knot), route changes at 1,000 and 10,000 routes; then the criterion
## micro-benchmarks.
bench: deps
	@command -v nginx >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx; }
	@command -v wrk >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk || true
	@test -e /usr/lib/nginx/modules/ngx_stream_module.so || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnginx-mod-stream || true
	@for t in dnsperf:dnsperf dnsmasq:dnsmasq-base knotd:knot dig:dnsutils; do \
	  command -v $${t%%:*} >/dev/null 2>&1 || PKGS="$$PKGS $${t#*:}"; \
	done; \
	if [ -n "$$PKGS" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$PKGS; fi
	$(CARGO) build --release --locked
	python3 scripts/bench.py
	python3 scripts/bench_dns.py
	python3 scripts/bench_routes.py
	$(CARGO) bench --locked --bench route_table -- --warm-up-time 1 --measurement-time 3
	$(CARGO) bench --locked -p itproxy-daemon --bench publish -- --warm-up-time 1 --measurement-time 3

clean:
	$(CARGO) clean
