# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := contracts/evm/node_modules/.installed

.PHONY: setup softhsm postgres fabric buf geth cometbft helm kubeconform systemd tools release demo test test-unit test-integration test-e2e test-fabric lint format typecheck proto contracts core bench clean

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
	@# The lock pins every transitive dependency, so it is installed without resolution: the
	@# devnet serves the chaincode from this environment, and the chaincode's
	@# hyperledger-fabric-protos declares protobuf<6 (its gencode runs on our protobuf 7).
	@# The released wheel needs no such trick (ADR 0021): pip resolves kstb[...] cleanly.
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -r requirements.lock
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	@touch $@

$(NODE_STAMP): contracts/evm/package.json contracts/evm/package-lock.json
	cd contracts/evm && npm install --no-audit --no-fund --loglevel=error
	@touch $@

# Native Hyperledger Fabric binaries, built with the Go toolchain into .cache/fabric/<version>.
fabric:
	bash deploy/fabric/build.sh

# buf (lint, breaking-change check against proto/releases/) and the Go protoc plugins of the
# example brokerage client (examples/go-client), built into .cache/buf/<version>.
buf:
	bash deploy/buf/build.sh

# go-ethereum (ADR 0019), built with the Go toolchain into .cache/geth/<version> (cold: about
# 15 minutes of CPU on the 2-core machine; only ./cmd/geth).
.PHONY: geth
geth:
	bash deploy/geth/build.sh

# CometBFT (the proprietary-chain kind, ADR 0018), built the same way into .cache/cometbft/<version>.
cometbft:
	bash deploy/cometbft/build.sh


# Helm and kubeconform (chart checks, ADR 0021), built with the Go toolchain into .cache/.
helm:
	bash deploy/helm/build.sh

kubeconform:
	bash deploy/kubeconform/build.sh

# systemd-analyze, which checks the units in deploy/systemd (Debian package systemd).
systemd:
	@if ! command -v systemd-analyze >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd; \
	fi

# The release (ADR 0021): wheel + sdist (the wheel is built from the sdist), the chaincode
# server's source with its pinned requirements, the Fabric CCaaS package (mutual TLS to the
# chaincode server whose CA is CHAINCODE_TLS_ROOT; none without it), the Helm chart (its
# version = the package's), the systemd units, the constraints file and SHA256SUMS, all in
# dist/, built from `git archive HEAD` with SOURCE_DATE_EPOCH = the commit's time. A dirty
# tree is refused; RELEASE_ALLOW_DIRTY=1 builds it anyway as version <v>+dirty.
CHAINCODE_ADDRESS ?= kstb-chaincode:9999
CHAINCODE_TLS_ROOT ?=
RELEASE_ALLOW_DIRTY ?=
RELEASE_KEY_CONFIG ?=
release: setup
	$(BIN)/python -m bridge.tools.release --dist dist --chaincode-address $(CHAINCODE_ADDRESS) \
		$(if $(CHAINCODE_TLS_ROOT),--chaincode-tls-root $(CHAINCODE_TLS_ROOT)) \
		$(if $(RELEASE_ALLOW_DIRTY),--allow-dirty)
	$(if $(RELEASE_KEY_CONFIG),$(BIN)/python -m bridge.tools.release_signature sign --dist dist \
		--key-config $(RELEASE_KEY_CONFIG))

demo: setup fabric cometbft
	KSTB_PLAINTEXT_KEYS_FOR_DEVELOPMENT=1 $(BIN)/python -m bridge.devnet.demo

# The suite on the embedded store, then an e2e subset on a PostgreSQL cluster the tests
# start themselves (ADR 0013), chosen for what the store changes: the tests that write
# transfers through every path (commit, abort, idempotency, a lock adopted from the chain),
# kill or lose the coordinator mid-flight (transfers, supply streams, chaos, the flow queue,
# which lives only in the store), build the supply feed from stored records under load, and
# check the generated configuration (the coordinator's PostgreSQL section). The e2e tests
# left out here refuse before anything is stored, or exercise relayers, members, ledgers
# and clients the same way on either store; they run in the first pass, and the store's
# own contract runs on both engines in the unit tier (tests/unit, [postgres] cases). The HA
# e2e runs on PostgreSQL in the first pass. Every e2e module on PostgreSQL adds about 15
# minutes, over CI's budget: `make test-postgres-e2e-all` (or KSTB_E2E_STORE=postgres pytest
# tests/e2e/...). test_store_restore (SQLite stores' backups) and test_installed_package
# (the embedded demo) are SQLite by design.
# The PostgreSQL pass also turns the coordinator's batched steps on (KSTB_DEVNET_BATCHING=1,
# architecture section 22): the first pass covers single steps, this one the configuration a
# busy production coordinator runs (PostgreSQL and batches), chaos included, at no extra time.
PG_E2E = tests/e2e/test_chaos.py \
	tests/e2e/test_transfers.py::test_committed_transfer_in_each_direction \
	tests/e2e/test_transfers.py::test_ineligible_recipient_aborts_and_releases_to_sender \
	tests/e2e/test_transfers.py::test_one_idempotency_key_makes_one_transfer \
	tests/e2e/test_transfers.py::test_every_server_has_health_and_reflection \
	tests/e2e/test_transfers.py::test_coordinator_killed_mid_transfer_finishes_after_restart \
	tests/e2e/test_transfers.py::test_holder_locking_directly_on_chain_is_carried_through \
	tests/e2e/test_transfers.py::test_every_generated_configuration_file_passes_the_strict_checks \
	tests/e2e/test_supply.py::test_identity_holds_in_every_attestation_during_random_transfers \
	tests/e2e/test_supply.py::test_stream_resumes_after_disconnect_and_coordinator_kill \
	tests/e2e/test_supply.py::test_watch_reconnects_while_the_coordinator_is_down \
	tests/e2e/test_supply.py::test_out_of_band_issue_is_detected_held_and_released_by_an_operator \
	tests/e2e/test_supply.py::test_cli_verifies_the_whole_feed \
	tests/e2e/test_flow_limits.py::test_a_burst_queues_in_order_and_drains_at_the_refill_rate
PG_E2E_MODULES = tests/e2e/test_transfers.py tests/e2e/test_supply.py tests/e2e/test_chaos.py \
	tests/e2e/test_flow_limits.py
PG_E2E_ALL = $(PG_E2E_MODULES) tests/e2e/test_batch.py tests/e2e/test_cometbft_lanes.py \
	tests/e2e/test_deadlines.py tests/e2e/test_doctor.py tests/e2e/test_fabric_lanes.py \
	tests/e2e/test_faulty_verifiers.py tests/e2e/test_geth_lane.py tests/e2e/test_go_client.py \
	tests/e2e/test_halt.py tests/e2e/test_instructions.py tests/e2e/test_key_custody.py \
	tests/e2e/test_observability.py tests/e2e/test_parking.py tests/e2e/test_rotation.py \
	tests/e2e/test_security_feed.py tests/e2e/test_security_transport.py
# Every tool the suite needs that is built or installed outside the venv (cold, about ten
# minutes of CPU for the Go builds; each target is a no-op when its output exists). One
# build at a time (a lock under .run): CI starts one beside lint and the type check, and
# `make test` its own, which then waits for the first and finds everything there.
tools:
	@mkdir -p .run
	flock .run/tools.lock $(MAKE) --no-print-directory tools-unlocked

.PHONY: tools-unlocked
tools-unlocked: fabric buf geth cometbft helm kubeconform systemd

# Everything CI must run, in three passes (tests/conftest.py defines the tiers, which are
# complements): the tests that need no built tool (unit, anvil integration) while the tools
# build in the background, then every other test, then the PostgreSQL e2e subset. Every
# pass runs even when an earlier one failed; the target fails when any did.
TIER_FREE_PATHS = tests/unit tests/integration
test: setup
	@mkdir -p .run
	@$(MAKE) --no-print-directory tools > .run/test-tools.log 2>&1 & tools=$$!; \
	$(BIN)/python -m pytest --tier=tool-free $(TIER_FREE_PATHS); free=$$?; \
	if ! wait $$tools; then \
		cat .run/test-tools.log; echo "building the tools failed" >&2; exit 1; \
	fi; \
	tail -n 20 .run/test-tools.log; \
	$(BIN)/python -m pytest --tier=needs-tools; rest=$$?; \
	KSTB_E2E_STORE=postgres KSTB_DEVNET_BATCHING=1 $(BIN)/python -m pytest $(PG_E2E); pg=$$?; \
	echo "make test: tool-free tier exit $$free, needs-tools tier exit $$rest, PostgreSQL e2e exit $$pg"; \
	[ $$free = 0 ] && [ $$rest = 0 ] && [ $$pg = 0 ]

.PHONY: test-postgres-e2e test-postgres-e2e-all
test-postgres-e2e-all: setup tools
	KSTB_E2E_STORE=postgres $(BIN)/python -m pytest $(PG_E2E_ALL)

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
	$(BIN)/mypy --strict bench  # scripts importing their siblings: checked as files

# The Python stubs and the Go client's code (both committed, both drift-tested).
proto: setup buf
	$(BIN)/python -m bridge.tools.gen_proto
	$(BIN)/python -m bridge.tools.gen_go_client

contracts: setup
	$(BIN)/python -m bridge.tools.build_contracts

# The protocol core: vendor it into the chaincode and regenerate its golden vectors.
core: setup
	$(BIN)/python -m bridge.tools.vendor_core
	$(BIN)/python -m bridge.tools.core_vectors

bench: setup
	$(BIN)/python bench/transfers.py

clean:
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache build dist
