# The one front door: make setup | run | test | lint | bench.
# Everything lands in ignored folders (.venv, .cache, .data) so repeated runs are quick.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Downloads and builds (Kafka jars, the test API server): reused by every later run.
IPLEDGER_CACHE ?= $(CURDIR)/.cache
export IPLEDGER_CACHE

.PHONY: setup test test-unit lint bench bench-quick bench-soak run demo services clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $@

# Real services the integration tests and benchmarks start themselves: Kafka jars from Maven
# Central; kube-apiserver and etcd built, and Cilium's CiliumNode CRDs taken, from the Go module
# proxy (compose/kube/build.sh, about six minutes cold); helm and promtool (which tests the alert
# rules) built from it too. Cached under $(IPLEDGER_CACHE). kcat and docker-compose, which the
# docs' examples and the compose file are checked with, come from Debian (as root).
services: setup
	bash compose/debian-tools.sh
	bash compose/kafka/fetch.sh
	bash compose/kube/build.sh
	bash compose/helm/build.sh
	bash compose/prometheus/build.sh

test: setup services
	$(PY) -m pytest

test-unit: setup
	$(PY) -m pytest tests/unit

lint: setup
	$(VENV)/bin/ruff check service tests bench migrations
	$(VENV)/bin/ruff format --check service tests bench migrations
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The whole suite against the real services (an hour or more): the results merged into
# $(BENCH_JSON), the generated part of docs/benchmarks.md and its plots (docs/img/) rewritten.
# BENCH_ARGS='--only allocator' reruns one benchmark and keeps the others' rows. The soak is
# long and runs only as make bench-soak (its last figures stay in the report).
BENCH_JSON ?= docs/bench-results.json
BENCH_ARGS ?=
BENCH_QUICK ?= .data/bench-quick
bench: setup services
	$(PY) -m bench --keep-going --json $(BENCH_JSON) --report docs/benchmarks.md --plots docs/img $(BENCH_ARGS)

# A smoke run of every benchmark at --quick sizes (about five minutes on a quiet machine: each
# has a budget in bench/__main__.py, a run over it says so; one Kafka broker and PostgreSQL
# server shared by the benchmarks that need them); its report and plots go to $(BENCH_QUICK)/,
# not docs/: quick sizes are not the figures of record.
bench-quick: setup services
	$(PY) -m bench --quick --keep-going --fresh --json $(BENCH_QUICK)/results.json --report $(BENCH_QUICK)/benchmarks.md --plots $(BENCH_QUICK)/img $(BENCH_ARGS)

bench-soak: setup services
	$(PY) -m bench --only soak --keep-going --json $(BENCH_JSON) --report docs/benchmarks.md --plots docs/img $(BENCH_ARGS)

# The whole product on an embedded PostgreSQL, one supervised process tree (ipledger up): the
# allocator, the sync worker (CiliumNodes as files in .data/ciliumnodes/ unless
# IPLEDGER_KUBECONFIG names a cluster) and the query API on 127.0.0.1:8080. Ctrl-C stops it.
run: setup
	$(VENV)/bin/ipledger up

# A scripted tour on the embedded default (examples/demo.sh): ipledger up on .data/demo, the
# examples appended step by step, the results through the API, ipledger status and the
# CiliumNode files, then everything stopped.
demo: setup
	bash examples/demo.sh

# The web dashboard's static files (service/dashboard/static, committed) rebuilt from its
# TypeScript sources with the esbuild and TypeScript pinned in its package-lock.json, which
# npm installs under $(IPLEDGER_CACHE)/dashboard-npm (compose/dashboard/build.sh).
dashboard:
	bash compose/dashboard/build.sh

clean:
	rm -rf $(VENV) $(IPLEDGER_CACHE) .mypy_cache .ruff_cache .pytest_cache
