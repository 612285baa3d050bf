# itproxy: the two set-up commands are `make up` and `make test`.
CARGO ?= cargo
# Extra arguments for `itproxy up`, e.g. make up ARGS="--http 127.0.0.1:8080"
ARGS ?=

.PHONY: all deps build up test lint unit bench clean

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

## The whole suite: formatting, lints, unit and integration tests (real binary, loopback only).
test: lint
	$(CARGO) test --workspace --locked

## Side-by-side benchmark (direct vs itproxy vs nginx) plus the criterion micro-benchmarks.
bench: deps
	@command -v nginx >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx; }
	@command -v wrk >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk || true
	@test -e /usr/lib/nginx/modules/ngx_stream_module.so || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnginx-mod-stream || true
	$(CARGO) build --release --locked
	python3 scripts/bench.py
	$(CARGO) bench --locked --bench route_table -- --warm-up-time 1 --measurement-time 3

clean:
	$(CARGO) clean
