# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := contracts/evm/node_modules/.installed

.PHONY: setup softhsm postgres fabric demo test test-unit test-integration test-e2e test-fabric lint format typecheck proto contracts core bench clean

setup: $(STAMP) $(NODE_STAMP) softhsm postgres

# SoftHSM2, the PKCS#11 token the key-custody tests use (Debian package softhsm2).
# A no-op when the module is present; as root it installs with apt-get, otherwise via sudo.
SOFTHSM_MODULE ?= /usr/lib/softhsm/libsofthsm2.so
softhsm:
	@if [ ! -e "$(SOFTHSM_MODULE)" ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2; \
	fi

# PostgreSQL 15, the coordinator's production store (ADR 0013); the tests run initdb and
# pg_ctl themselves on a free port (Debian package postgresql). A no-op when installed.
PG_BINDIR ?= /usr/lib/postgresql/15/bin
postgres:
	@if [ ! -x "$(PG_BINDIR)/initdb" ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	fi

$(STAMP): requirements.lock pyproject.toml
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	@# The lock pins every transitive dependency, so it is installed without resolution:
	@# hyperledger-fabric-protos declares protobuf<6 but its gencode runs on our protobuf 7.
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -r requirements.lock
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	@touch $@

$(NODE_STAMP): contracts/evm/package.json contracts/evm/package-lock.json
	cd contracts/evm && npm install --no-audit --no-fund --loglevel=error
	@touch $@

# Native Hyperledger Fabric binaries, built with the Go toolchain into .cache/fabric/<version>.
fabric:
	bash deploy/fabric/build.sh

demo: setup fabric
	KSTB_PLAINTEXT_KEYS_FOR_DEVELOPMENT=1 $(BIN)/python -m bridge.devnet.demo

# The suite on the embedded store, then a representative e2e subset on a PostgreSQL cluster
# the tests start themselves (ADR 0013): transfers (incl. a coordinator kill), the supply
# feed, chaos and flow limits, about 8 minutes on the 2-core machine. Rotation and halt add
# about 8 minutes more: `make test-postgres-e2e PG_E2E="$(PG_E2E_ALL)"` (or
# KSTB_E2E_STORE=postgres pytest tests/e2e/...) runs any module on PostgreSQL.
PG_E2E = tests/e2e/test_transfers.py tests/e2e/test_supply.py tests/e2e/test_chaos.py \
	tests/e2e/test_flow_limits.py
PG_E2E_ALL = tests/e2e/test_transfers.py tests/e2e/test_supply.py tests/e2e/test_chaos.py \
	tests/e2e/test_flow_limits.py tests/e2e/test_rotation.py tests/e2e/test_halt.py
test: setup fabric
	$(BIN)/python -m pytest
	KSTB_E2E_STORE=postgres $(BIN)/python -m pytest $(PG_E2E)

.PHONY: test-postgres-e2e
test-postgres-e2e: setup
	KSTB_E2E_STORE=postgres $(BIN)/python -m pytest $(PG_E2E)

# Active/passive coordinators, relayers and members on their own (ADR 0017; part of `test`).
.PHONY: test-ha
test-ha: setup fabric
	$(BIN)/python -m pytest -m ha

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: setup
	$(BIN)/mypy

proto: setup
	$(BIN)/python -m bridge.tools.gen_proto

contracts: setup
	$(BIN)/python -m bridge.tools.build_contracts

# The protocol core: vendor it into the chaincode and regenerate its golden vectors.
core: setup
	$(BIN)/python -m bridge.tools.vendor_core
	$(BIN)/python -m bridge.tools.core_vectors

bench: setup
	$(BIN)/python bench/transfers.py

clean:
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache
