# Zaptrix — the two set-up commands are `make run` and `make test`; both install what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

export ZAPTRIX_CACHE ?= $(HOME)/.cache/zaptrix
export UV_CACHE_DIR ?= $(ZAPTRIX_CACHE)/uv
export UV_PYTHON_DOWNLOADS := never
export UV_LINK_MODE := copy

.PHONY: help run test test-fast k8s-test check lint typecheck protos protos-check docs bench faults sync stack-up stack-down clean

help:
	@echo "make run    - start the whole system locally (PostgreSQL, Kafka, Jaeger, all services, sandbox stand-ins)"
	@echo "make test   - lint, type-check and run every test against real PostgreSQL and Kafka"
	@echo "make test-fast - lint and run the tests that need no PostgreSQL, Kafka or processes (about a minute on 2 cores)"
	@echo "make k8s-test - install the chart with helm into a throwaway control plane (etcd, kube-apiserver, kwok nodes)"
	@echo "make bench  - run the benchmarks in bench/ (prints a table, writes bench/results/*.json)"
	@echo "make faults - kill and freeze every component under load; count lost and duplicated messages (bench/results/faults.json)"
	@echo "make protos - regenerate libs/zaptrix/zaptrix/v1 from protos/"

sync:
	@"$$(dev/stack/uv.sh)" sync --frozen --quiet

run: sync
	@dev/run.sh

test:
	@dev/test.sh

test-fast:
	@dev/test-fast.sh

# Heavier: builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and kwok once.
k8s-test: sync
	@dev/k8s/k8s-test.sh

check: sync lint typecheck protos-check

lint: sync
	@"$$(dev/stack/uv.sh)" run --frozen ruff check .
	@"$$(dev/stack/uv.sh)" run --frozen ruff format --check .

typecheck: sync
	@"$$(dev/stack/uv.sh)" run --frozen mypy

protos: sync
	@"$$(dev/stack/uv.sh)" run --frozen dev/protos.sh

protos-check: sync
	@"$$(dev/stack/uv.sh)" run --frozen dev/protos.sh --check

docs: sync
	@"$$(dev/stack/uv.sh)" run --frozen python dev/config_docs.py

bench: sync
	@dev/bench.sh

faults: sync
	@dev/faults.sh

stack-up:
	@dev/stack/up.sh --with-jaeger

stack-down:
	@dev/stack/down.sh

clean:
	@dev/stack/down.sh || true
	rm -rf .local
