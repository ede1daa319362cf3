#!/usr/bin/env bash
# Build the pinned buf CLI (lint, breaking-change check, image builds of proto/) and the Go
# protoc plugins of the example brokerage client, natively with the Go toolchain.
#
#   deploy/buf/build.sh                      # build into .cache/buf/<version>/ if missing
#   BUF_FORCE_BUILD=1 deploy/buf/build.sh    # rebuild even if present
#
# Output (git-ignored through .cache/, keyed by buf's version):
#   .cache/buf/<version>/bin/buf
#   .cache/buf/<version>/bin/{protoc-gen-go,protoc-gen-go-grpc}
#
# Pins. buf's version and every module hash: deploy/buf/gomod/go.mod and go.sum (a `tool`
# directive). The plugins: examples/go-client/go.mod and go.sum (`tool` directives), so the
# generated Go code always matches the google.golang.org/protobuf and grpc versions the
# client links. -mod=readonly makes a missing or wrong go.sum entry an error. To move buf,
# `go get -tool github.com/bufbuild/buf/cmd/buf@vX.Y.Z && go mod tidy` in gomod/ and change
# BUF_VERSION below.
#
# Idempotent: does nothing when every binary already exists. Needs only the Go module proxy.
set -euo pipefail

BUF_VERSION="1.75.0"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"
CACHE="${BUF_CACHE_DIR:-${ROOT}/.cache/buf/${BUF_VERSION}}"
BIN="${CACHE}/bin"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
CLIENT="${ROOT}/examples/go-client"

TOOLS=(buf protoc-gen-go protoc-gen-go-grpc)

missing() {
  local b
  for b in "${TOOLS[@]}"; do [[ -x "${BIN}/${b}" ]] || return 0; done
  return 1
}

if [[ "${BUF_FORCE_BUILD:-0}" != "1" ]] && ! missing; then
  echo "buf ${BUF_VERSION}: binaries present in ${BIN} (nothing to do)"
  exit 0
fi

if [[ ! -x "${GO}" ]]; then
  echo "error: Go toolchain not found (install Go >= 1.26 or set GO=/path/to/go)" >&2
  exit 1
fi

mkdir -p "${BIN}"
export CGO_ENABLED=0 GOTOOLCHAIN=local
export GOFLAGS="-mod=readonly -buildvcs=false"

echo "buf ${BUF_VERSION} with $("${GO}" version)"
start=$(date +%s)
echo "+ cd deploy/buf/gomod && GOBIN=${BIN} go install -trimpath tool"
(cd "${HERE}/gomod" && GOBIN="${BIN}" "${GO}" install -trimpath tool)
echo "+ cd examples/go-client && GOBIN=${BIN} go install -trimpath tool"
(cd "${CLIENT}" && GOBIN="${BIN}" "${GO}" install -trimpath tool)
end=$(date +%s)
echo "buf ${BUF_VERSION}: built in $((end - start))s into ${BIN}"
"${BIN}/buf" --version
