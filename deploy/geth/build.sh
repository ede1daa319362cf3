#!/usr/bin/env bash
# Build the pinned go-ethereum (geth) client natively with the Go toolchain (no Docker).
#
#   deploy/geth/build.sh                       # build into .cache/geth/<version>/ if missing
#   GETH_FORCE_BUILD=1 deploy/geth/build.sh    # rebuild even if present
#
# Output (git-ignored through .cache/, keyed by version):
#   .cache/geth/<version>/bin/geth
#
# Pin. The release is chosen by deploy/geth/gomod/go.mod (`require github.com/ethereum/
# go-ethereum v1.17.10` plus `tool .../cmd/geth`) and every module's hash by
# deploy/geth/gomod/go.sum; -mod=readonly makes a missing or wrong entry an error. geth's tags
# are valid Go module versions, so the checksum database verifies them too. Only ./cmd/geth is
# built (no abigen, clef, devp2p, evm tools). To move to a newer release: change the require
# line, run `go get -tool github.com/ethereum/go-ethereum/cmd/geth@<v>` in gomod/, and
# GETH_VERSION below.
#
# Idempotent: does nothing when the binary already exists. Needs only the Go module proxy.
set -euo pipefail

GETH_VERSION="1.17.10"
GETH_MODULE="github.com/ethereum/go-ethereum"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"
CACHE="${GETH_CACHE_DIR:-${ROOT}/.cache/geth/${GETH_VERSION}}"
BIN="${CACHE}/bin"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"

if [[ "${GETH_FORCE_BUILD:-0}" != "1" ]] && [[ -x "${BIN}/geth" ]]; then
  echo "geth ${GETH_VERSION}: binary present in ${BIN} (nothing to do)"
  exit 0
fi

if [[ ! -x "${GO}" ]]; then
  echo "error: Go toolchain not found (install Go >= 1.25 or set GO=/path/to/go)" >&2
  exit 1
fi

mkdir -p "${BIN}"
# geth builds without cgo (pure-Go secp256k1 and pebble); a static binary needs no libc match.
export CGO_ENABLED=0 GOTOOLCHAIN=local
export GOFLAGS="-mod=readonly -buildvcs=false"

echo "geth ${GETH_VERSION} with $("${GO}" version)"
echo "+ cd deploy/geth/gomod && GOBIN=${BIN} go install -trimpath ${GETH_MODULE}/cmd/geth"
start=$(date +%s)
(cd "${HERE}/gomod" && GOBIN="${BIN}" "${GO}" install -trimpath "${GETH_MODULE}/cmd/geth")
end=$(date +%s)
echo "geth ${GETH_VERSION}: built in $((end - start))s into ${BIN}"
"${BIN}/geth" version | sed -n '1,3p'
