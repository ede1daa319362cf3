#!/usr/bin/env bash
# Build the pinned Helm CLI natively with the Go toolchain (chart checks: `helm lint`,
# `helm template`; ADR 0021).
#
#   deploy/helm/build.sh                      # build into .cache/helm/<version>/ if missing
#   HELM_FORCE_BUILD=1 deploy/helm/build.sh   # rebuild even if present
#
# Output (git-ignored through .cache/): .cache/helm/<version>/bin/helm
#
# Pin. deploy/helm/gomod/go.mod names helm.sh/helm/v3 at HELM_VERSION as a `tool` and
# deploy/helm/gomod/go.sum pins every module hash (verified against the checksum database
# too). To move: `go get -tool helm.sh/helm/v3/cmd/helm@vX.Y.Z` in gomod/ and HELM_VERSION.
#
# Idempotent: does nothing when the binary exists. Needs only the Go module proxy.
set -euo pipefail

HELM_VERSION="3.22.0"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"
BIN="${HELM_CACHE_DIR:-${ROOT}/.cache/helm/${HELM_VERSION}}/bin"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"

if [[ "${HELM_FORCE_BUILD:-0}" != "1" && -x "${BIN}/helm" ]]; then
  echo "helm ${HELM_VERSION}: present in ${BIN} (nothing to do)"
  exit 0
fi
if [[ ! -x "${GO}" ]]; then
  echo "error: Go toolchain not found (install Go >= 1.26 or set GO=/path/to/go)" >&2
  exit 1
fi

mkdir -p "${BIN}"
export CGO_ENABLED=0 GOTOOLCHAIN=local
export GOFLAGS="-mod=readonly -buildvcs=false"
LDFLAGS="-s -w -X helm.sh/helm/v3/internal/version.version=v${HELM_VERSION}"

echo "helm ${HELM_VERSION} with $("${GO}" version)"
start=$(date +%s)
(cd "${HERE}/gomod" && GOBIN="${BIN}" "${GO}" install -trimpath -ldflags "${LDFLAGS}" tool)
end=$(date +%s)
echo "helm ${HELM_VERSION}: built in $((end - start))s into ${BIN}"
"${BIN}/helm" version --short
