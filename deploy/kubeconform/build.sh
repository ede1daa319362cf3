#!/usr/bin/env bash
# Build the pinned kubeconform natively with the Go toolchain, and lay out the Kubernetes JSON
# schemas it validates against offline (ADR 0021).
#
#   deploy/kubeconform/build.sh                            # build into .cache/kubeconform/<version>/
#   KUBECONFORM_FORCE_BUILD=1 deploy/kubeconform/build.sh  # rebuild even if present
#
# Output (git-ignored through .cache/):
#   .cache/kubeconform/<version>/bin/kubeconform
#   .cache/kubeconform/<version>/schemas/v<k8s>-standalone-strict/<kind>-<group>-<version>.json
#
# Pins.
# - kubeconform: deploy/kubeconform/gomod/go.mod (`tool`) and go.sum (every module hash).
# - Schemas: kubeconform downloads them from a web host at run time by default; we never let
#   it (no network but the package registries). The PyPI package kubernetes-validate ships
#   the schemas generated from each Kubernetes release's OpenAPI document, in the same
#   <kind>-<group>-<version>.json layout kubeconform reads. We fetch that wheel with pip,
#   pinned by version AND sha256 (pip --require-hashes), take the one Kubernetes version we
#   target (K8S_VERSION, strict variant: unknown fields are errors), drop each file's
#   top-level "$id" (a kubernetes.io URL that would make every reference resolve against
#   that web host) and rewrite the absolute "$ref": "/api/_definitions.json#..." into the
#   file-relative "_definitions.json#..." kubeconform resolves on disk. Nothing of it is
#   imported or executed.
#
# Idempotent: does nothing when the binary and the schemas exist.
set -euo pipefail

KUBECONFORM_VERSION="0.8.0"
K8S_VALIDATE_VERSION="1.37.0"
K8S_VALIDATE_SHA256="85136d018a27b50ec7fc049d902bfa5193f5976807e6c0f408e3ab6fe078cad9"
K8S_VERSION="1.37.0"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"
CACHE="${KUBECONFORM_CACHE_DIR:-${ROOT}/.cache/kubeconform/${KUBECONFORM_VERSION}}"
BIN="${CACHE}/bin"
SCHEMAS="${CACHE}/schemas/v${K8S_VERSION}-standalone-strict"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
PY="${PY:-$(command -v python3.11 || command -v python3)}"

if [[ "${KUBECONFORM_FORCE_BUILD:-0}" != "1" && -x "${BIN}/kubeconform" \
      && -f "${SCHEMAS}/_definitions.json" ]]; then
  echo "kubeconform ${KUBECONFORM_VERSION}: present in ${BIN} (nothing to do)"
  exit 0
fi
if [[ ! -x "${GO}" ]]; then
  echo "error: Go toolchain not found (install Go >= 1.26 or set GO=/path/to/go)" >&2
  exit 1
fi

mkdir -p "${BIN}"
export CGO_ENABLED=0 GOTOOLCHAIN=local
export GOFLAGS="-mod=readonly -buildvcs=false"
echo "kubeconform ${KUBECONFORM_VERSION} with $("${GO}" version)"
start=$(date +%s)
(cd "${HERE}/gomod" && GOBIN="${BIN}" "${GO}" install -trimpath \
  -ldflags "-s -w -X main.version=v${KUBECONFORM_VERSION}" tool)

tmp="$(mktemp -d)"
trap 'rm -rf "${tmp}"' EXIT
echo "kubernetes-validate==${K8S_VALIDATE_VERSION} --hash=sha256:${K8S_VALIDATE_SHA256}" \
  > "${tmp}/req.txt"
"${PY}" -m pip download --quiet --no-deps --only-binary :all: --require-hashes \
  -r "${tmp}/req.txt" -d "${tmp}/wheel"
"${PY}" - "${tmp}"/wheel/*.whl "${SCHEMAS}" "v${K8S_VERSION}-local-strict" <<'PYEOF'
import json, sys, zipfile
from pathlib import Path

wheel, out, variant = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
prefix = f"kubernetes_validate/kubernetes-json-schema/{variant}/"
out.mkdir(parents=True, exist_ok=True)
count = 0
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        if name.startswith(prefix) and name.endswith(".json"):
            schema = json.loads(zf.read(name))
            schema.pop("$id", None)
            text = json.dumps(schema, indent=1, sort_keys=True)
            text = text.replace('"/api/_definitions.json#', '"_definitions.json#')
            (out / name[len(prefix):]).write_text(text)
            count += 1
if count == 0:
    raise SystemExit(f"no schemas for {variant} in {wheel}")
print(f"{count} schemas into {out}")
PYEOF
end=$(date +%s)
echo "kubeconform ${KUBECONFORM_VERSION}: built in $((end - start))s into ${BIN}"
"${BIN}/kubeconform" -v
