#!/usr/bin/env bash
# Build the pinned Hyperledger Fabric binaries natively with the Go toolchain (no Docker).
#
#   deploy/fabric/build.sh                        # build into .cache/fabric/<version>/ if missing
#   FABRIC_FORCE_BUILD=1 deploy/fabric/build.sh   # rebuild even if present
#
# Output (git-ignored through .cache/, keyed by version):
#   .cache/fabric/<version>/bin/{peer,orderer,configtxgen,cryptogen,osnadmin}
#   .cache/fabric/<version>/sampleconfig/        (Fabric's reference configs, for reading only)
#
# Pin. The Fabric release is chosen by deploy/fabric/gomod/go.mod, and every module's hash by
# deploy/fabric/gomod/go.sum (so the build is verified even though the checksum database is not
# asked about Fabric, see GONOSUMDB below). Fabric's repository tags (v2.x) are not valid Go
# module versions (the module path has no /v2), so a release is addressed by its commit's
# pseudo-version:
#   v2.5.9  = commit 7c3876255bf064b789a839ce347b6a02adb6333c = v0.0.0-20240618194258-7c3876255bf0
# v2.5.16 (f871cf92a026...) is wanted, but the Go module proxy reachable from our machines does
# not serve that version (403 "This module version is not available"), nor v2.5.10..v2.5.15;
# v2.5.9 is the newest 2.5 release it serves. To move to a newer release, change the require
# line in gomod/go.mod, run `go mod tidy` there with the same environment, and FABRIC_VERSION.
#
# The chaincode-as-a-service external builder is not built here: Fabric keeps it in a nested
# module (ccaas_builder/go.mod) that the proxy does not serve, and it is three trivial
# programs, so deploy/fabric/ccaas_builder/bin/{detect,build,release} are our own scripts.
#
# Idempotent: does nothing when every binary already exists. Needs only the Go module proxy.
set -euo pipefail

FABRIC_VERSION="2.5.9"
FABRIC_COMMIT="7c3876255bf064b789a839ce347b6a02adb6333c"   # tag v2.5.9
FABRIC_MODULE="github.com/hyperledger/fabric"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"
CACHE="${FABRIC_CACHE_DIR:-${ROOT}/.cache/fabric/${FABRIC_VERSION}}"
BIN="${CACHE}/bin"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"

TOOLS=(peer orderer configtxgen cryptogen osnadmin)

missing() {
  local b
  for b in "${TOOLS[@]}"; do [[ -x "${BIN}/${b}" ]] || return 0; done
  return 1
}

if [[ "${FABRIC_FORCE_BUILD:-0}" != "1" ]] && ! missing; then
  echo "fabric ${FABRIC_VERSION}: binaries present in ${BIN} (nothing to do)"
  exit 0
fi

if [[ ! -x "${GO}" ]]; then
  echo "error: Go toolchain not found (install Go >= 1.24 or set GO=/path/to/go)" >&2
  exit 1
fi

mkdir -p "${BIN}"
export CGO_ENABLED=0 GOTOOLCHAIN=local
# go.sum in gomod/ pins every hash; -mod=readonly makes a missing or wrong entry an error.
export GOFLAGS="-mod=readonly -buildvcs=false"
export GONOSUMDB="${FABRIC_MODULE}"
LDFLAGS="-X ${FABRIC_MODULE}/common/metadata.Version=${FABRIC_VERSION}"
LDFLAGS+=" -X ${FABRIC_MODULE}/common/metadata.CommitSHA=${FABRIC_COMMIT:0:7}"

echo "fabric ${FABRIC_VERSION} (${FABRIC_COMMIT}) with $("${GO}" version)"
echo "+ cd deploy/fabric/gomod && GOBIN=${BIN} go install -trimpath -ldflags '${LDFLAGS}' tool"
start=$(date +%s)
(cd "${HERE}/gomod" && GOBIN="${BIN}" "${GO}" install -trimpath -ldflags "${LDFLAGS}" tool)

# Fabric's own reference configs ship in the same verified module download; keep a copy to
# read next to the binaries (our configs are deploy/fabric/*.yaml, not these).
moddir="$(cd "${HERE}/gomod" && "${GO}" list -m -f '{{.Dir}}' "${FABRIC_MODULE}")"
rm -rf "${CACHE}/sampleconfig"
cp -r "${moddir}/sampleconfig" "${CACHE}/sampleconfig"
chmod -R u+w "${CACHE}/sampleconfig"

echo "${FABRIC_COMMIT}" > "${CACHE}/COMMIT"
end=$(date +%s)
echo "fabric ${FABRIC_VERSION}: built in $((end - start))s into ${BIN}"
"${BIN}/peer" version | sed -n '1,3p'
