#!/usr/bin/env bash
# Install the pinned buf CLI (lint, breaking-change check and images of proto/) and build the
# Go protoc plugins of the example brokerage client.
#
#   deploy/buf/build.sh                      # install into .cache/buf/<version>/ if missing
#   BUF_FORCE_BUILD=1 deploy/buf/build.sh    # reinstall even if present
#
# Output (git-ignored through .cache/, keyed by buf's version):
#   .cache/buf/<version>/bin/buf    (-> ../npm/node_modules/@bufbuild/buf-<platform>/bin/buf)
#   .cache/buf/<version>/bin/{protoc-gen-go,protoc-gen-go-grpc}
#
# buf comes from the npm package @bufbuild/buf, pinned with its integrity hashes by
# deploy/buf/package.json and package-lock.json (`npm ci`: a missing or wrong hash is an
# error). It ships Buf's release binary for this platform. Measured cold on the 2-core
# machine: npm about 15 s, against about 4.5 CPU-minutes (13 minutes wall on a busy machine)
# to compile github.com/bufbuild/buf v1.75.0 from the Go module proxy; so npm it is. To move
# buf: change the version in package.json, `npm install --package-lock-only` there, and
# BUF_VERSION below (bridge/tools/buf.py too; a test keeps them equal).
#
# The plugins are built with the Go toolchain from the `tool` directives of
# examples/go-client/go.mod (pinned by its go.sum, -mod=readonly), so the generated code
# always matches the google.golang.org/protobuf and grpc versions the client links.
#
# Idempotent: does nothing when every binary already exists. Needs npm, Go and the registries.
set -euo pipefail

BUF_VERSION="1.75.0"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"
CACHE="${KSTB_BUF_DIR:-${ROOT}/.cache/buf/${BUF_VERSION}}"
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

if ! command -v npm >/dev/null; then
  echo "error: npm not found (install Node.js >= 18)" >&2
  exit 1
fi
if [[ ! -x "${GO}" ]]; then
  echo "error: Go toolchain not found (install Go >= 1.26 or set GO=/path/to/go)" >&2
  exit 1
fi

start=$(date +%s)
mkdir -p "${BIN}" "${CACHE}/npm"
cp "${HERE}/package.json" "${HERE}/package-lock.json" "${CACHE}/npm/"
echo "+ npm ci (@bufbuild/buf ${BUF_VERSION}) in ${CACHE}/npm"
(cd "${CACHE}/npm" && npm ci --no-audit --no-fund --loglevel=error)
# The platform package's release binary itself (not the Node.js shim in @bufbuild/buf/bin).
native=("${CACHE}"/npm/node_modules/@bufbuild/buf-*/bin/buf)
if [[ ${#native[@]} -ne 1 || ! -x "${native[0]}" ]]; then
  echo "error: no single @bufbuild/buf-<platform> binary installed: ${native[*]}" >&2
  exit 1
fi
ln -sfn "../npm/${native[0]#"${CACHE}/npm/"}" "${BIN}/buf"
mid=$(date +%s)

export CGO_ENABLED=0 GOTOOLCHAIN=local
export GOFLAGS="-mod=readonly -buildvcs=false"
echo "+ cd examples/go-client && GOBIN=${BIN} go install -trimpath tool   ($("${GO}" version))"
(cd "${CLIENT}" && GOBIN="${BIN}" "${GO}" install -trimpath tool)
end=$(date +%s)

echo "buf ${BUF_VERSION}: npm in $((mid - start))s, Go plugins in $((end - mid))s, into ${BIN}"
"${BIN}/buf" --version
