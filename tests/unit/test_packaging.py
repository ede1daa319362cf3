"""Packaging and deployment artifacts (issue 12 item 5, ADR 0021): the generated Fabric
protos, the typed error for a missing extra, --version, the systemd units
(``systemd-analyze verify``), the Helm chart (``helm lint``, ``helm template``,
``kubeconform``) and the deterministic release.

Tools (systemd-analyze, helm, kubeconform) are built or installed by ``make test``; a test
needing one skips only when it is absent outside CI and fails when it is absent in CI.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bridge.devnet.processes import REPO_ROOT

pytestmark = [pytest.mark.unit, pytest.mark.ops]

HELM = REPO_ROOT / ".cache" / "helm" / "3.22.0" / "bin" / "helm"
KUBECONFORM_DIR = REPO_ROOT / ".cache" / "kubeconform" / "0.8.0"
KUBECONFORM = KUBECONFORM_DIR / "bin" / "kubeconform"
K8S_VERSION = "1.37.0"
CHART = REPO_ROOT / "deploy" / "helm" / "kstb"
UNITS = REPO_ROOT / "deploy" / "systemd"


def _tool(path: Path | str | None, what: str) -> str:
    if path is not None and Path(path).exists():
        return str(path)
    if os.environ.get("CI"):
        pytest.fail(f"{what} missing in CI (make test builds it)")
    pytest.skip(f"{what} not installed (make {what})")


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, **kw)


# ---- Fabric protos generated from the vendored sources


def test_committed_fabric_protos_match_their_sources() -> None:
    result = _run([sys.executable, "-m", "bridge.tools.gen_fabric_proto", "--check"], cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr


def test_fabric_proto_drift_is_detected(tmp_path: Path) -> None:
    from bridge.tools.gen_fabric_proto import OUT_PACKAGE, drifted, generate

    out = generate(tmp_path)
    assert drifted(out, OUT_PACKAGE) == []
    (out / "peer" / "proposal_pb2.py").write_text("# edited\n")
    (out / "peer" / "extra_pb2.py").write_text("# new\n")
    assert drifted(out, OUT_PACKAGE) == ["peer/extra_pb2.py", "peer/proposal_pb2.py"]


def test_generated_descriptors_are_byte_identical_to_the_fabric_wheel() -> None:
    """Same wire format as the upstream bindings, and both may load in one process (the
    devnet chaincode and the tests import the upstream wheel next to ours)."""
    pytest.importorskip("fabric_protos")
    from bridge.tools.gen_fabric_proto import OUT_PACKAGE

    files = sorted(OUT_PACKAGE.rglob("*_pb2.py"))
    assert len(files) == 15
    for path in files:
        src = path.read_text()
        blob = re.search(r"AddSerializedFile\((b'.*?')\)\n", src, re.S)
        assert blob is not None, path
        rel = path.relative_to(OUT_PACKAGE).with_suffix("").as_posix().replace("/", ".")
        upstream = importlib.import_module(f"fabric_protos.{rel}").DESCRIPTOR.serialized_pb
        ours = importlib.import_module(f"bridge.ledgers.fabric.pb.{rel}")
        assert ast.literal_eval(blob.group(1)) == upstream, rel
        assert ours.DESCRIPTOR.serialized_pb == upstream, rel


def test_the_fabric_client_never_imports_the_fabric_wheel() -> None:
    code = (
        "import sys, bridge.ledgers.fabric.adapter, bridge.ledgers.fabric.gateway;"
        "bad = [m for m in sys.modules if m.startswith(('fabric_protos', 'fabric_chaincode'))];"
        "assert not bad, bad"
    )
    result = _run([sys.executable, "-c", code], cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr


# ---- a missing extra is a typed error naming it

_HIDE_WEB3 = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('web3', 'eth_account'):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Hide())
"""


def test_an_evm_ledger_without_the_evm_extra_is_refused_naming_the_extra() -> None:
    code = (
        _HIDE_WEB3
        + """
from pathlib import Path
from bridge.ledgers.kinds import MissingExtra, get_kind
kind = get_kind('evm')  # the light kind module loads without web3
try:
    kind.open(None, None, None, writable=False)
except MissingExtra as exc:
    assert (exc.ledger_kind, exc.extra, exc.module) == ('evm', 'evm', 'web3'), vars(exc)
    assert "kstb[evm]" in str(exc)
    assert not [m for m in sys.modules if m.startswith(('web3', 'bridge.ledgers.evm.adapter'))]
    print('refused')
else:
    raise SystemExit('opened without web3')
"""
    )
    result = _run([sys.executable, "-c", code], cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "refused"


def test_require_extra_passes_when_the_modules_are_installed() -> None:
    from bridge.ledgers.kinds import MissingExtra, require_extra

    require_extra("evm", "evm", ("web3", "eth_account"))
    with pytest.raises(MissingExtra) as info:
        require_extra("x", "x-extra", ("json", "no_such_module_kstb"))
    assert (info.value.ledger_kind, info.value.extra, info.value.module) == (
        "x",
        "x-extra",
        "no_such_module_kstb",
    )


# ---- --version


@pytest.mark.parametrize(
    ("module", "prog"),
    [
        ("bridge.cli.main", "bridge"),
        ("bridge.coordinator", "bridge-coordinator"),
        ("relayers", "bridge-relayer"),
        ("verifiers", "bridge-verifier"),
    ],
)
def test_every_entry_point_reports_the_package_version(module: str, prog: str) -> None:
    from importlib import metadata

    result = _run([sys.executable, "-m", module, "--version"], cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{prog} {metadata.version('kstb')}"


def test_entry_points_in_pyproject_are_the_ones_checked() -> None:
    import tomllib

    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert sorted(scripts) == ["bridge", "bridge-coordinator", "bridge-relayer", "bridge-verifier"]


# ---- systemd units

HARDENING = (
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "ReadOnlyPaths=/etc/kstb",
    "CapabilityBoundingSet=",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "SystemCallFilter=@system-service",
    "UMask=0077",
    "StateDirectoryMode=0700",
)


def _unit_root(tmp_path: Path) -> Path:
    """A root with the host's system units (for sysinit.target & co), stub executables
    where the units expect the installed entry points, and our units."""
    _tool(shutil.which("systemd-analyze"), "systemd")  # skip/fail before copying anything
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    bindir = root / "opt" / "kstb" / "venv" / "bin"
    bindir.mkdir(parents=True)
    for name in ("bridge-coordinator", "bridge-relayer", "bridge-verifier"):
        (bindir / name).write_text("#!/bin/sh\n")
        (bindir / name).chmod(0o755)
    etc = root / "etc" / "systemd" / "system"
    etc.mkdir(parents=True)
    for unit in UNITS.glob("*.service"):
        shutil.copyfile(unit, etc / unit.name)
    shutil.copyfile(etc / "kstb-relayer@.service", etc / "kstb-relayer@brokerage-a.service")
    return root


def _verify(root: Path, units: list[str]) -> subprocess.CompletedProcess[str]:
    analyze = _tool(shutil.which("systemd-analyze"), "systemd")
    return _run(
        [analyze, "verify", f"--root={root}", *units], cwd=root / "etc" / "systemd" / "system"
    )


UNIT_NAMES = [
    "kstb-coordinator.service",
    "kstb-relayer@brokerage-a.service",
    "kstb-verifier.service",
]


def test_systemd_units_verify_cleanly(tmp_path: Path) -> None:
    result = _verify(_unit_root(tmp_path), UNIT_NAMES)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # not even a warning


def test_systemd_verify_catches_a_misspelt_directive_and_a_missing_binary(
    tmp_path: Path,
) -> None:
    root = _unit_root(tmp_path)
    unit = root / "etc" / "systemd" / "system" / "kstb-verifier.service"
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict"))
    (root / "opt" / "kstb" / "venv" / "bin" / "bridge-coordinator").unlink()
    result = _verify(root, ["kstb-verifier.service", "kstb-coordinator.service"])
    assert "Unknown key" in result.stderr and "ProtectSytem" in result.stderr
    assert "bridge-coordinator is not executable" in result.stderr
    assert result.returncode != 0


@pytest.mark.parametrize("unit", sorted(p.name for p in UNITS.glob("*.service")))
def test_every_unit_is_hardened(unit: str) -> None:
    lines = {line.strip() for line in (UNITS / unit).read_text().splitlines()}
    missing = [d for d in HARDENING if d not in lines]
    assert not missing, missing
    assert "ProtectProc=invisible" in lines
    # Statuses a restart cannot fix: 3 (a ledger node is not the configured ledger) for
    # every daemon, 6 (a newer release upgraded the database) for the coordinator.
    (prevent,) = [v for k, v in _directives(UNITS / unit) if k == "RestartPreventExitStatus"]
    expected = {"3", "6"} if unit == "kstb-coordinator.service" else {"3"}
    assert set(prevent.split()) == expected, prevent


def _directives(unit: Path) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.append((key, value))
    return out


# The one key directory each unit may see (F1/F2/F9 of the s18 review, ADR 0021 §6).
OWN_KEYS = {
    "kstb-coordinator.service": "/etc/kstb/keys/coordinator",
    "kstb-relayer@.service": "/etc/kstb/keys/relayer/%i",
    "kstb-verifier.service": "/etc/kstb/keys/verifier",
}


def test_no_two_units_share_a_user_and_relayer_instances_get_one_each() -> None:
    """SECURITY: a shared UID passes the kernel's ptrace check, so /proc/<pid>/root,
    /proc/<pid>/environ and kill() would reach the other daemons' keys, PINs and vote log."""
    users: dict[str, str] = {}
    for unit in sorted(UNITS.glob("*.service")):
        d = dict(_directives(unit))
        assert "DynamicUser" not in d, unit.name
        assert d["User"] == d["Group"], unit.name
        users[unit.name] = d["User"]
    assert sorted(users) == sorted(OWN_KEYS)
    assert len(set(users.values())) == len(users), users
    assert users["kstb-relayer@.service"] == "kstb-relayer-%i"  # one user per ledger
    assert "kstb" not in users.values()
    sysusers = [
        line.split()[1]
        for line in (UNITS / "kstb.sysusers.conf").read_text().splitlines()
        if line.startswith("u ")
    ]
    assert sorted(sysusers) == ["kstb-coordinator", "kstb-verifier"]


@pytest.mark.parametrize("unit", sorted(OWN_KEYS))
def test_each_unit_sees_only_its_own_key_directory(unit: str) -> None:
    """An allow-list: /etc/kstb/keys is an empty read-only tmpfs with exactly the unit's
    own directory bound in; no other directive opens a path under /etc/kstb/keys."""
    directives = _directives(UNITS / unit)
    assert ("TemporaryFileSystem", "/etc/kstb/keys:ro") in directives
    binds = [v for k, v in directives if k in {"BindReadOnlyPaths", "BindPaths"}]
    assert binds == [OWN_KEYS[unit]], binds
    for key, value in directives:
        if key in {"TemporaryFileSystem", "BindReadOnlyPaths"}:
            continue
        assert "/etc/kstb/keys" not in value, (key, value)
    # secrets and env files stay out of directories other units can read
    assert all("/etc/kstb/secrets" not in v for _, v in directives)
    env = [v for k, v in directives if k == "EnvironmentFile"]
    assert env and all(v.startswith("-/etc/kstb/") and v.endswith(".env") for v in env)


def test_operator_docs_name_the_units_key_directories_and_owners() -> None:
    """The guides put keys, passphrases and PINs where the units let only their owner see
    them (no shared secrets directory, no group kstb)."""
    install = (REPO_ROOT / "docs" / "operators" / "install.md").read_text()
    keys = (REPO_ROOT / "docs" / "operators" / "keys.md").read_text()
    for unit, own in OWN_KEYS.items():
        user = dict(_directives(UNITS / unit))["User"].replace("%i", "brokerage-a")
        path = own.replace("%i", "brokerage-a")
        assert re.search(
            rf"-o {re.escape(user)} -g {re.escape(user)} \\?\s*{re.escape(path)}", install
        ), unit
    assert "owner `kstb`" not in install and "-g kstb " not in install
    assert re.search(r'pin_file = "keys/verifier/', keys)
    assert re.search(r'passphrase_file = "keys/verifier/', keys)
    for doc in (install, keys, *(u.read_text() for u in UNITS.iterdir())):
        assert '_file = "secrets/' not in doc and "/etc/kstb/secrets" not in doc
        assert "group kstb" not in doc


# ---- Helm chart


def _template(*extra: str) -> str:
    helm = _tool(HELM, "helm")
    result = _run([helm, "template", "rel", str(CHART), "--kube-version", K8S_VERSION, *extra])
    assert result.returncode == 0, result.stderr
    return result.stdout


def _kubeconform(manifests: str) -> subprocess.CompletedProcess[str]:
    tool = _tool(KUBECONFORM, "kubeconform")
    schemas = KUBECONFORM_DIR / "schemas"
    location = (
        f"{schemas}/{{{{ .NormalizedKubernetesVersion }}}}-standalone{{{{ .StrictSuffix }}}}"
        "/{{ .ResourceKind }}{{ .KindSuffix }}.json"
    )
    return _run(
        [
            tool,
            "-strict",
            "-summary",
            "-kubernetes-version",
            K8S_VERSION,
            "-schema-location",
            location,
            "-",
        ],
        input=manifests,
    )


def test_helm_lint_is_clean() -> None:
    helm = _tool(HELM, "helm")
    result = _run([helm, "lint", "--strict", "--kube-version", K8S_VERSION, str(CHART)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_rendered_chart_validates_against_the_kubernetes_schemas() -> None:
    result = _kubeconform(_template())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid: 12, Invalid: 0, Errors: 0, Skipped: 0" in result.stdout, result.stdout


def test_kubeconform_refuses_a_wrong_type_and_an_unknown_field() -> None:
    manifests = _template()
    for broken, needle in (
        (manifests.replace("replicas: 1", 'replicas: "one"', 1), "/spec/replicas"),
        (manifests.replace("serviceName:", "serviceNam:", 1), "serviceNam"),
    ):
        result = _kubeconform(broken)
        assert result.returncode != 0
        assert needle in result.stdout, result.stdout


def test_chart_invariants() -> None:
    """One pod per store, readiness from gRPC health over mTLS, keys read-only from
    Secrets, stores on PVCs, configuration from ConfigMaps, no service account token."""
    yaml = pytest.importorskip("yaml")
    docs = [d for d in yaml.safe_load_all(_template()) if d]
    sets = [d for d in docs if d["kind"] == "StatefulSet"]
    assert {s["metadata"]["name"] for s in sets} == {
        "rel-coordinator",
        "rel-relayer-brokerage-a",
        "rel-verifier-member-0",
    }
    for s in sets:
        spec = s["spec"]
        pod = spec["template"]["spec"]
        assert spec["replicas"] == 1
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        (main,) = pod["containers"]
        probe = main["readinessProbe"]["exec"]["command"]
        assert probe[0] == "bridge" and "health" in probe and "--client-config" in probe
        mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
        assert mounts["/etc/kstb/keys"]["readOnly"] is True
        assert mounts["/etc/kstb"]["readOnly"] is True
        assert main["securityContext"]["readOnlyRootFilesystem"] is True
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "secretName" in volumes["keys"]["secret"]
        assert "configMap" in volumes["config"]
        (claim,) = spec["volumeClaimTemplates"]
        assert claim["metadata"]["name"] == "store" and mounts["/var/lib/kstb"]
    roles = {
        s["metadata"]["name"]: s["spec"]["template"]["spec"]["containers"][0]["readinessProbe"][
            "exec"
        ]["command"][-1]
        for s in sets
    }
    assert roles["rel-relayer-brokerage-a"] == "relayer:brokerage-a"
    assert roles["rel-coordinator"] == "coordinator"


def test_keys_are_mounted_from_the_secret_itself_so_updates_reach_the_daemon() -> None:
    """F3 (review s18): /etc/kstb/keys is the Secret volume, whole (no subPath, which the
    kubelet never refreshes), no container copies it (a copy would freeze revocation lists
    and certificates at pod start), and the daemon is told to accept its root:fsGroup 0440
    files; the pod runs no second container and does not share its process namespace."""
    yaml = pytest.importorskip("yaml")
    docs = [d for d in yaml.safe_load_all(_template()) if d]
    sets = [d for d in docs if d["kind"] == "StatefulSet"]
    assert len(sets) == 3
    for s in sets:
        pod = s["spec"]["template"]["spec"]
        assert "initContainers" not in pod and not pod.get("shareProcessNamespace")
        (main,) = pod["containers"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        secret_volumes = {n for n, v in volumes.items() if "secret" in v}
        assert not [v for v in volumes.values() if "emptyDir" in v and v["name"] != "tmp"]
        for m in main["volumeMounts"]:
            assert "subPath" not in m and "subPathExpr" not in m, m
        (keys,) = [m for m in main["volumeMounts"] if m["mountPath"] == "/etc/kstb/keys"]
        assert keys["name"] in secret_volumes and keys["readOnly"] is True
        assert volumes[keys["name"]]["secret"]["defaultMode"] == 0o440
        assert secret_volumes == {keys["name"]}  # no other copy of the Secret anywhere
        env = {e["name"]: e["value"] for e in main["env"]}
        assert env["KSTB_KEYS_READABLE_BY_OWN_POD_GROUP"] == "1"
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


def test_metrics_are_reachable_only_from_the_allowed_peers() -> None:
    """F11 (review s18): one NetworkPolicy per daemon; gRPC (mutual TLS) from any source by
    default, the plaintext metrics port only from this namespace's pods unless widened."""
    yaml = pytest.importorskip("yaml")
    docs = [d for d in yaml.safe_load_all(_template()) if d]
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    sets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "StatefulSet"}
    assert set(policies) == set(sets)
    for name, policy in policies.items():
        labels = sets[name]["spec"]["template"]["metadata"]["labels"]
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert selector.items() <= labels.items()
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        by_port = {r["ports"][0]["port"]: r for r in policy["spec"]["ingress"]}
        assert set(by_port) == {"grpc", "metrics"}
        assert "from" not in by_port["grpc"]
        assert by_port["metrics"]["from"] == [{"podSelector": {}}]
    monitoring = '{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"mon"}}}'
    out = _template("--set-json", f"networkPolicy.metricsFrom=[{monitoring}]")
    docs = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "NetworkPolicy"]
    rules = docs[0]["spec"]["ingress"]
    assert rules[1]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "mon"
    }
    assert "NetworkPolicy" not in _template("--set", "networkPolicy.enabled=false")


def test_disabling_components_renders_only_the_rest() -> None:
    out = _template("--set", "coordinator.enabled=false", "--set", "verifiers=null")
    assert "rel-coordinator" not in out and "rel-verifier" not in out
    assert "rel-relayer-brokerage-a" in out


# ---- release


def test_release_artifacts_are_deterministic_and_checksummed(tmp_path: Path) -> None:
    from bridge.tools.release import write_release

    a, b = tmp_path / "a", tmp_path / "b"
    ca = tmp_path / "chaincode-ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    write_release(a, "kstb-chaincode:9999", ca)
    write_release(b, "kstb-chaincode:9999", ca)
    assert (a / "SHA256SUMS").read_text() == (b / "SHA256SUMS").read_text()
    sums = (a / "SHA256SUMS").read_text().splitlines()
    names = sorted(p.name for p in a.iterdir() if p.name != "SHA256SUMS")
    assert [line.split("  ")[1] for line in sums] == names
    for line in sums:
        digest, name = line.split("  ")
        assert hashlib.sha256((a / name).read_bytes()).hexdigest() == digest
    with tarfile.open(a / "kstb-chaincode-0.1.0.tar.gz") as tar:
        members = tar.getnames()
        reqs = tar.extractfile("kstb-chaincode-0.1.0/requirements.txt")
        assert reqs is not None
        pins = [ln for ln in reqs.read().decode().splitlines() if ln and not ln.startswith("#")]
    assert "kstb-chaincode-0.1.0/kstb_chaincode/core/digests.py" in members
    assert not [m for m in members if "__pycache__" in m or m.endswith(".pyc")]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[^=\s]+", p) for p in pins), pins
    with tarfile.open(a / "kstb-chaincode-0.1.0-ccaas.tar.gz") as tar:
        meta_file = tar.extractfile("metadata.json")
        code_file = tar.extractfile("code.tar.gz")
        assert meta_file is not None and code_file is not None
        meta = json.loads(meta_file.read())
        with tarfile.open(fileobj=io.BytesIO(code_file.read())) as code:
            conn_file = code.extractfile("connection.json")
            assert conn_file is not None
            conn = json.loads(conn_file.read())
    assert meta == {"type": "ccaas", "label": "kstb_0.1.0"}
    assert conn["address"] == "kstb-chaincode:9999"
    assert conn["tls_required"] is True and conn["client_auth_required"] is True
    with tarfile.open(a / "kstb-0.1.0.tgz") as tar:
        assert "kstb/Chart.yaml" in tar.getnames()


# ---- bridge health (the supervisors' readiness probe)


async def test_bridge_health_exit_status_follows_the_health_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    from bridge.cli.main import main as cli_main
    from bridge.rpc.server import BridgeServer
    from bridge.rpc.tls import INSECURE_ENV

    monkeypatch.setenv(INSECURE_ENV, "1")  # plaintext here; mTLS is the channel layer's job
    server = BridgeServer("127.0.0.1:0", ["test.Service"], [])
    await server.start(serving=False)

    def probe(target: str) -> int:
        argv = ["--timeout", "5", "health", "--target", target, "--role", "coordinator"]
        return cli_main(argv)

    try:
        target = f"127.0.0.1:{server.port}"
        assert await asyncio.to_thread(probe, target) == 1  # NOT_SERVING
        await server.set_serving(True)
        assert await asyncio.to_thread(probe, target) == 0  # SERVING
        await server.set_serving(False)
        assert await asyncio.to_thread(probe, target) == 1
    finally:
        await server.stop()
    assert await asyncio.to_thread(probe, target) == 2  # unreachable


def test_bridge_health_refuses_a_malformed_role() -> None:
    from bridge.cli.main import main as cli_main

    argv = ["health", "--target", "127.0.0.1:1", "--role", "relayer:NOT A LEDGER"]
    assert cli_main(argv) == 2


async def test_bridge_health_over_mutual_tls_authenticates_the_role(tmp_path: Path) -> None:
    """The probe reports SERVING only from a server holding ``--role``: the same healthy
    coordinator probed as if it were a relayer is unreachable (exit 2), not SERVING."""
    import asyncio

    from bridge.cli.main import main as cli_main
    from bridge.config import TlsConfig, dump_toml, load_network
    from bridge.devnet.pki import DevPki
    from bridge.rpc.security import server_security
    from bridge.rpc.server import BridgeServer
    from tests.unit.test_authorisation import A, network_with

    pki = DevPki(tmp_path / "pki")
    pki.organisation("bridge-operator", ["coordinator", "bridge-operator"])
    server_cert = pki.issue("bridge-operator", "coordinator", "coordinator")
    pki.organisation(A, [f"brokerage:{A}", f"relayer:{A}"])
    client_cert = pki.issue(A, f"relayer:{A}", f"relayer-{A}")
    network_file = network_with(pki, tmp_path)
    security, audit = server_security(
        "coordinator",
        load_network(network_file),
        TlsConfig(server_cert.cert_file, server_cert.key_file, ()),
        tmp_path / "audit.jsonl",
    )
    config = tmp_path / "relayer.toml"
    config.write_text(
        dump_toml(
            {
                "network": str(network_file),
                "tls": {
                    "cert_file": str(client_cert.cert_file),
                    "key_file": str(client_cert.key_file),
                },
            }
        )
    )
    server = BridgeServer("127.0.0.1:0", ["test.Service"], [], security=security)
    await server.start(serving=True)

    def probe(role: str) -> int:
        target = f"127.0.0.1:{server.port}"
        argv = ["--client-config", str(config), "--timeout", "5", "health"]
        return cli_main([*argv, "--target", target, "--role", role])

    try:
        assert await asyncio.to_thread(probe, "coordinator") == 0
        assert await asyncio.to_thread(probe, f"relayer:{A}") == 2  # wrong server identity
        await server.set_serving(False)
        assert await asyncio.to_thread(probe, "coordinator") == 1
    finally:
        await server.stop()
        audit.close()
