"""Chaincode lifecycle on the dev network: CCaaS packages, install, approve and commit
(both organisations endorse), as functions of a
:class:`~bridge.devnet.fabric.network.FabricNetwork`, which exposes them as methods."""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import tarfile
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from bridge.devnet.fabric.binaries import BOTH_ORGS_POLICY, FabricError
from bridge.devnet.processes import wait_until

if TYPE_CHECKING:
    from bridge.devnet.fabric.network import FabricNetwork
    from bridge.devnet.fabric.orgs import FabricOrg


def ccaas_package(
    name: str, chaincode_address: str, version: str = "1.0", tls_root: bytes | None = None
) -> bytes:
    """The CCaaS package bytes (deterministic for the same inputs).

    ``code.tar.gz`` holds ``connection.json`` ({address, dial_timeout, tls_required:
    false}, or with ``tls_root`` (the chaincode server's CA, PEM) tls_required and
    client_auth_required true and root_cert; the peer's client key pair is added by the
    builder's ``release``); the outer ``.tar.gz`` holds ``metadata.json`` ({type: ccaas,
    label}) and it.
    """
    label = f"{name}_{version}"
    connection: dict[str, object] = {
        "address": chaincode_address,
        "dial_timeout": "10s",
        "tls_required": False,
    }
    if tls_root is not None:
        connection["tls_required"] = True
        connection["client_auth_required"] = True
        connection["root_cert"] = tls_root.decode("ascii")
    metadata = {"type": "ccaas", "label": label}
    code = _targz({"connection.json": json.dumps(connection).encode()})
    return _targz({"metadata.json": json.dumps(metadata).encode(), "code.tar.gz": code})


def ccaas_package_id(
    name: str,
    chaincode_address: str,
    version: str = "1.0",
    tls_root: bytes | None = None,
) -> str:
    """The package id (``label:sha256``) that ``deploy_ccaas`` returns for these inputs."""
    pkg = ccaas_package(name, chaincode_address, version, tls_root)
    return f"{name}_{version}:{hashlib.sha256(pkg).hexdigest()}"


def committed(net: FabricNetwork, name: str) -> dict[str, object] | None:
    """The committed definition of chaincode ``name`` (as JSON), or None."""
    try:
        out = net.peer_cli(
            "Org1",
            [
                "lifecycle",
                "chaincode",
                "querycommitted",
                "-C",
                net.channel,
                "-n",
                name,
                "-O",
                "json",
            ],
        )
    except FabricError as exc:
        if "404" in str(exc) or "not found" in str(exc):
            return None
        raise
    data: dict[str, object] = json.loads(out[out.index("{") :])
    return data


def deploy_ccaas(
    net: FabricNetwork,
    name: str,
    chaincode_address: str,
    version: str = "1.0",
    tls: bool = False,
    init_required: bool = False,
) -> str:
    """Install, approve (both orgs) and commit a chaincode-as-a-service; return its package id.

    With ``tls`` the peers dial the chaincode server over TLS, verify it against
    :attr:`chaincode_ca` and present their own client certificates; serve it with
    :meth:`chaincode_server_tls_env`.

    The definition's endorsement policy is ``AND('Org1MSP.peer','Org2MSP.peer')``. Returns
    once the definition is committed on both peers. Idempotent: an identical committed
    definition is left as is; a changed one is committed with the next sequence. The
    chaincode server itself is started by the caller, with ``CHAINCODE_ID`` = the returned
    package id, listening at ``chaincode_address`` (the peers dial it on first use).
    """
    tls_root = net.chaincode_ca.ensure().cert_path.read_bytes() if tls else None
    pkg = ccaas_package(name, chaincode_address, version, tls_root)
    package_id = f"{name}_{version}:{hashlib.sha256(pkg).hexdigest()}"
    pkg_path = net.workdir / "chaincode" / f"{name}_{version}.tar.gz"
    pkg_path.parent.mkdir(parents=True, exist_ok=True)
    pkg_path.write_bytes(pkg)

    sequence = 1
    current = committed(net, name)
    if current is not None:
        if current.get("version") == version and _approved_package(net, name) == package_id:
            return package_id
        seq = current.get("sequence", 0)
        sequence = (seq if isinstance(seq, int) else 0) + 1

    for org in net.orgs.values():
        installed = net.peer_cli(org, ["lifecycle", "chaincode", "queryinstalled"])
        if package_id not in installed:
            net.peer_cli(org, ["lifecycle", "chaincode", "install", str(pkg_path)])
    definition = [
        "--channelID",
        net.channel,
        "--name",
        name,
        "--version",
        version,
        "--sequence",
        str(sequence),
        "--signature-policy",
        BOTH_ORGS_POLICY,
        *(["--init-required"] if init_required else []),
    ]
    for org in net.orgs.values():
        _lifecycle_tx(net, org, ["approveformyorg", *definition, "--package-id", package_id])
    _lifecycle_tx(net, net.orgs["Org1"], ["commit", *net.endorsing_peer_args(), *definition])
    for org in net.orgs.values():
        wait_until(
            functools.partial(_committed_on, net, org, name, sequence),
            net.start_timeout,
            f"chaincode {name} seq {sequence} committed on {org.name}",
            interval=0.2,
        )
    return package_id


def _approved_package(net: FabricNetwork, name: str) -> str | None:
    out = net.peer_cli(
        "Org1",
        [
            "lifecycle",
            "chaincode",
            "queryapproved",
            "-C",
            net.channel,
            "-n",
            name,
            "-O",
            "json",
        ],
    )
    data = json.loads(out[out.index("{") :])
    source = data.get("source", {})
    pkg = source.get("Type", {}).get("LocalPackage", {}).get("package_id")
    return str(pkg) if pkg else None


def _committed_on(net: FabricNetwork, org: FabricOrg, name: str, sequence: int) -> bool:
    out = net.peer_cli(
        org,
        [
            "lifecycle",
            "chaincode",
            "querycommitted",
            "-C",
            net.channel,
            "-n",
            name,
            "-O",
            "json",
        ],
    )
    data = json.loads(out[out.index("{") :])
    return int(data.get("sequence", 0)) >= sequence


def _lifecycle_tx(
    net: FabricNetwork,
    org: FabricOrg,
    args: Sequence[str],
    attempts: int = 20,
    delay: float = 0.5,
) -> str:
    """``peer lifecycle chaincode <args>`` through the orderer, retried while it has no
    raft leader yet (SERVICE_UNAVAILABLE); other errors are raised at once."""
    argv = ["lifecycle", "chaincode", args[0], *net.orderer_args(org), *args[1:]]
    for i in range(attempts):
        try:
            return net.peer_cli(org, argv)
        except FabricError as exc:
            transient = "SERVICE_UNAVAILABLE" in str(exc) or "no Raft leader" in str(exc)
            if not transient or i == attempts - 1:
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")


def _targz(files: Mapping[str, bytes]) -> bytes:
    """A gzip'd tar of ``files`` with fixed metadata, so equal inputs give equal bytes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()
