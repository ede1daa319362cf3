#!/usr/bin/env bash
# Build the pinned CometBFT binary natively with the Go toolchain (no Docker).
#
#   deploy/cometbft/build.sh                          # build into .cache/cometbft/<version>/ if missing
#   COMETBFT_FORCE_BUILD=1 deploy/cometbft/build.sh   # rebuild even if present
#
# Output (git-ignored through .cache/, keyed by version):
#   .cache/cometbft/<version>/bin/cometbft
#   .cache/cometbft/<version>/proto/        (the module's ABCI .proto files, for gen_abci --check)
#
# Pin. The release is chosen by deploy/cometbft/gomod/go.mod (require line) and every module's
# hash by deploy/cometbft/gomod/go.sum (-mod=readonly: a missing or wrong entry is an error;
# the checksum database also verifies CometBFT, which is a normal semver module). To move to
# a newer v1.0.x, change the require line, run `go mod tidy` in gomod/ with the same
# environment, and COMETBFT_VERSION below.
#
# Idempotent: does nothing when the binary already exists. Needs only the Go module proxy.
set -euo pipefail

COMETBFT_VERSION="1.0.1"
COMETBFT_MODULE="github.com/cometbft/cometbft"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"
CACHE="${COMETBFT_CACHE_DIR:-${ROOT}/.cache/cometbft/${COMETBFT_VERSION}}"
BIN="${CACHE}/bin"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"

if [[ "${COMETBFT_FORCE_BUILD:-0}" != "1" && -x "${BIN}/cometbft" && -d "${CACHE}/proto" ]]; then
  echo "cometbft ${COMETBFT_VERSION}: binary present in ${BIN} (nothing to do)"
  exit 0
fi

if [[ ! -x "${GO}" ]]; then
  echo "error: Go toolchain not found (install Go >= 1.24 or set GO=/path/to/go)" >&2
  exit 1
fi

mkdir -p "${BIN}"
export CGO_ENABLED=0 GOTOOLCHAIN=local
export GOFLAGS="-mod=readonly -buildvcs=false"
LDFLAGS="-X ${COMETBFT_MODULE}/version.CMTSemVer=${COMETBFT_VERSION}"

echo "cometbft ${COMETBFT_VERSION} with $("${GO}" version)"
start=$(date +%s)
(cd "${HERE}/gomod" && GOBIN="${BIN}" "${GO}" install -trimpath -ldflags "${LDFLAGS}" tool)

# The ABCI protos ship in the same verified module download: keep a copy next to the binary
# so the committed Python stubs can be checked against exactly this version.
moddir="$(cd "${HERE}/gomod" && "${GO}" list -m -f '{{.Dir}}' "${COMETBFT_MODULE}")"
rm -rf "${CACHE}/proto"
cp -r "${moddir}/proto" "${CACHE}/proto"
chmod -R u+w "${CACHE}/proto"
# The protos import gogoproto/gogo.proto (Go code-generation options only), from the
# cosmos/gogoproto module CometBFT itself requires, verified by the same go.sum.
gogodir="$(cd "${HERE}/gomod" && "${GO}" list -m -f '{{.Dir}}' github.com/cosmos/gogoproto)"
mkdir -p "${CACHE}/proto/gogoproto"
cp "${gogodir}/gogoproto/gogo.proto" "${CACHE}/proto/gogoproto/gogo.proto"
chmod u+w "${CACHE}/proto/gogoproto/gogo.proto"

end=$(date +%s)
echo "cometbft ${COMETBFT_VERSION}: built in $((end - start))s into ${BIN}"
"${BIN}/cometbft" version
