"""A native Hyperledger Fabric network (no Docker) for tests and the demo.

One etcdraft orderer (``OrdererMSP``) and two peer orgs (``Org1MSP``, ``Org2MSP``, one peer
each), all on 127.0.0.1 with mutual TLS, joined to one application channel (``bridge``) through
the channel participation API. Chaincode runs only as a service (CCaaS): the peers dial the
chaincode's gRPC server through the external builder in ``deploy/fabric/ccaas_builder``.

Transport security:

- peers and the orderer require a TLS client certificate from one of the orgs' TLS CAs
  (``clientAuthRequired``); the peer CLI presents the acting user's ``tls/client.crt``
  (:meth:`FabricNetwork.peer_env`, :meth:`FabricNetwork.orderer_args`), Gateway clients the
  same files (:meth:`FabricOrg.user_tls_cert`);
- a chaincode deployed with ``tls=True`` is dialled over TLS with client authentication:
  a devnet chaincode CA (:attr:`FabricNetwork.chaincode_ca`) issues the chaincode server's
  certificate and one client certificate per peer; the package carries only the CA
  certificate, and the external builder's ``release`` adds the peer's own client key pair.

Guarantees:

- every listener binds 127.0.0.1; ports are picked free on first start and kept in
  ``<workdir>/network.json``, because the orderer address is written into the channel's
  genesis block: a restart on the same work dir reuses them (and fails clearly if one is taken);
- ``start()`` is idempotent: crypto material, the genesis block and channel membership are made
  only when missing, and a running network is left alone;
- every wait is bounded and fails with a ``TimeoutError``/``FabricError`` that carries the log
  tail of the process concerned;
- ``stop()`` stops only the processes this object started, by pid (SIGTERM, then SIGKILL).

The binaries come from ``deploy/fabric/build.sh`` (Go toolchain, pinned release, cached in
``.cache/fabric/<version>/bin``); ``start()`` runs it when they are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from string import Template

from bridge.devnet.fabric import lifecycle
from bridge.devnet.fabric.binaries import (
    CCAAS_BUILDER_DIR,
    CLI_TIMEOUT,
    DEFAULT_CHANNEL,
    FABRIC_DEPLOY_DIR,
    FABRIC_VERSION,
    ORDERER_MSP_ID,
    START_TIMEOUT,
    FabricError,
    ensure_fabric_binaries,
)
from bridge.devnet.fabric.orgs import FabricOrg
from bridge.devnet.ledger_tls import DevCA
from bridge.devnet.processes import ManagedProcess, free_port, port_open, wait_until

DEFAULT_TOTAL_QUERY_LIMIT = 100_000
"""Fabric's default cap on the records one range read returns (``totalQueryLimit``)."""


class FabricNetwork:
    """The dev Fabric network in ``workdir`` (see the module docstring for its guarantees)."""

    def __init__(
        self,
        workdir: Path,
        channel: str = DEFAULT_CHANNEL,
        build_if_missing: bool = True,
        start_timeout: float = START_TIMEOUT,
        total_query_limit: int = DEFAULT_TOTAL_QUERY_LIMIT,
    ) -> None:
        self.workdir = workdir.resolve()
        if total_query_limit < 1:
            raise ValueError(f"total_query_limit must be positive, got {total_query_limit}")
        self.total_query_limit = total_query_limit
        """The peers' ``ledger.state.totalQueryLimit`` (tests crossing it set it small)."""
        self.channel = channel
        self.build_if_missing = build_if_missing
        self.start_timeout = start_timeout
        self.ports = self._load_or_pick_ports()
        self.orgs: dict[str, FabricOrg] = {
            name: FabricOrg(
                name=name,
                msp_id=f"{name}MSP",
                domain=f"{name.lower()}.example.com",
                peer_port=self.ports[f"{name.lower()}_peer"],
                chaincode_port=self.ports[f"{name.lower()}_chaincode"],
                operations_port=self.ports[f"{name.lower()}_operations"],
                crypto_dir=self.workdir
                / "crypto"
                / "peerOrganizations"
                / f"{name.lower()}.example.com",
            )
            for name in ("Org1", "Org2")
        }
        self._orderer: ManagedProcess | None = None
        self._peers: dict[str, ManagedProcess] = {}
        self._bin: Path | None = None
        self._log_offsets: dict[str, int] = {}
        self.last_start_seconds: float | None = None
        """Wall time of the last ``start()`` that brought the network up."""

    # ----------------------------------------------------------------- layout & properties

    def _load_or_pick_ports(self) -> dict[str, int]:
        path = self.workdir / "network.json"
        if path.exists():
            data = json.loads(path.read_text())
            return {str(k): int(v) for k, v in data["ports"].items()}
        names = ["orderer", "orderer_cluster", "orderer_admin", "orderer_operations"]
        for org in ("org1", "org2"):
            names += [f"{org}_peer", f"{org}_chaincode", f"{org}_operations"]
        ports: dict[str, int] = {}
        while len(ports) < len(names):
            port = free_port()
            if port not in ports.values():
                ports[names[len(ports)]] = port
        return ports

    @property
    def msp_ids(self) -> list[str]:
        """The peer orgs' MSP ids, ``["Org1MSP", "Org2MSP"]``."""
        return [org.msp_id for org in self.orgs.values()]

    def org(self, name_or_msp: str) -> FabricOrg:
        """An org by name (``Org1``) or MSP id (``Org1MSP``)."""
        for org in self.orgs.values():
            if name_or_msp in (org.name, org.msp_id):
                return org
        raise KeyError(name_or_msp)

    @property
    def gateway_endpoints(self) -> dict[str, str]:
        """MSP id -> ``127.0.0.1:port`` of that org's peer, which serves the Gateway API."""
        return {org.msp_id: org.peer_endpoint for org in self.orgs.values()}

    @property
    def tls_ca_certs(self) -> dict[str, Path]:
        """MSP id -> TLS CA certificate to trust for that org's peer (and ``OrdererMSP``)."""
        certs = {org.msp_id: org.tls_ca_cert for org in self.orgs.values()}
        certs[ORDERER_MSP_ID] = self.orderer_tls_ca_cert
        return certs

    @property
    def orderer_endpoint(self) -> str:
        """``127.0.0.1:port`` of the orderer's broadcast/deliver service (TLS)."""
        return f"127.0.0.1:{self.ports['orderer']}"

    @property
    def orderer_admin_endpoint(self) -> str:
        """``127.0.0.1:port`` of the orderer's channel participation API (mutual TLS)."""
        return f"127.0.0.1:{self.ports['orderer_admin']}"

    @property
    def _orderer_org_dir(self) -> Path:
        return self.workdir / "crypto" / "ordererOrganizations" / "example.com"

    @property
    def orderer_tls_ca_cert(self) -> Path:
        """The orderer org's TLS CA certificate."""
        return self._orderer_org_dir / "tlsca" / "tlsca.example.com-cert.pem"

    @property
    def _orderer_node_dir(self) -> Path:
        return self._orderer_org_dir / "orderers" / "orderer.example.com"

    @property
    def chaincode_ca(self) -> DevCA:
        """The devnet CA of peer -> chaincode TLS (server certificate and peers' client
        certificates); created with the other crypto material."""
        return DevCA(self.workdir / "chaincode-tls", "kstb devnet chaincode TLS CA")

    def chaincode_server_tls_env(self) -> dict[str, str]:
        """Environment for a chaincode server with TLS that requires the peers' client
        certificates (``CHAINCODE_TLS_*`` of ``kstb_chaincode``)."""
        server = self.chaincode_ca.issue(
            "chaincode-server", ("127.0.0.1", "localhost"), server=True
        )
        return {
            "CHAINCODE_TLS_CERT_FILE": str(server.cert),
            "CHAINCODE_TLS_KEY_FILE": str(server.key),
            "CHAINCODE_TLS_CLIENT_CA_FILE": str(self.chaincode_ca.cert_path),
        }

    @property
    def genesis_block(self) -> Path:
        """The channel's genesis (config) block."""
        return self.workdir / "channel" / f"{self.channel}.block"

    @property
    def logs_dir(self) -> Path:
        """Where each process's log is written."""
        return self.workdir / "logs"

    @property
    def running(self) -> bool:
        """True while the orderer and both peers run."""
        procs = [self._orderer, *self._peers.values()]
        return len(self._peers) == len(self.orgs) and all(
            p is not None and p.alive() for p in procs
        )

    def pids(self) -> dict[str, int]:
        """Name -> pid of each process this object started and that still runs."""
        procs = [p for p in (self._orderer, *self._peers.values()) if p is not None and p.alive()]
        return {p.name: p.pid for p in procs}

    # ------------------------------------------------------------------------- lifecycle

    def start(self) -> FabricNetwork:
        """Bring the network up and the channel joined by the orderer and both peers.

        Idempotent; builds the binaries first if they are missing (unless
        ``build_if_missing=False``). On failure, everything started here is stopped again.
        """
        if self.running:
            return self
        began = time.monotonic()
        self._bin = ensure_fabric_binaries(self.build_if_missing)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._check_ports_free()
        (self.workdir / "network.json").write_text(
            json.dumps(
                {"fabric": FABRIC_VERSION, "channel": self.channel, "ports": self.ports}, indent=2
            )
        )
        try:
            self._generate_artifacts()
            self._start_orderer()
            self._orderer_join()
            for org in self.orgs.values():
                self._start_peer(org)
            for org in self.orgs.values():
                self._peer_join(org)
            self._wait_gossip()
        except BaseException:
            self.stop()
            raise
        self.last_start_seconds = time.monotonic() - began
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Stop the peers, then the orderer, by pid (SIGTERM, SIGKILL after ``grace``)."""
        for proc in self._peers.values():
            proc.stop(grace)
        if self._orderer is not None:
            self._orderer.stop(grace)

    def __enter__(self) -> FabricNetwork:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _check_ports_free(self) -> None:
        taken = {name: port for name, port in self.ports.items() if port_open(port)}
        if taken:
            raise FabricError(
                f"ports of {self.workdir} are in use: {taken}; is another FabricNetwork on "
                f"this work dir still running? (stop it, or use a fresh work dir)"
            )

    # ---------------------------------------------------------------------- artifacts

    def _tool(self, name: str) -> str:
        assert self._bin is not None
        return str(self._bin / name)

    def _run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        timeout: float = CLI_TIMEOUT,
        what: str = "",
    ) -> str:
        """Run a Fabric CLI command; return its combined output or raise ``FabricError``."""
        full_env = dict(os.environ)
        for key in [k for k in full_env if k.startswith(("CORE_", "ORDERER_", "FABRIC_"))]:
            del full_env[key]
        if env:
            full_env.update(env)
        try:
            result = subprocess.run(
                list(argv),
                capture_output=True,
                text=True,
                env=full_env,
                cwd=self.workdir,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(
                f"timed out after {timeout:.0f}s: {what or argv[0]}: {' '.join(argv)}"
            ) from exc
        out = (result.stdout or "") + (result.stderr or "")
        if result.returncode != 0:
            raise FabricError(
                f"{what or argv[0]} failed ({result.returncode}): {' '.join(argv)}\n{out[-4000:]}"
            )
        return out

    def _render(self, template: str, dest: Path, values: Mapping[str, object]) -> None:
        text = Template((FABRIC_DEPLOY_DIR / template).read_text())
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text.safe_substitute({k: str(v) for k, v in values.items()}))

    def _generate_artifacts(self) -> None:
        self.chaincode_ca.ensure()
        for org in self.orgs.values():
            self.chaincode_ca.issue(f"peer-{org.name.lower()}", client=True)
        if not (self.workdir / "crypto" / "peerOrganizations").is_dir():
            tmp = self.workdir / "crypto.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            self._run(
                [
                    self._tool("cryptogen"),
                    "generate",
                    f"--config={FABRIC_DEPLOY_DIR / 'crypto-config.yaml'}",
                    f"--output={tmp}",
                ],
                what="cryptogen",
            )
            tmp.rename(self.workdir / "crypto")
        if not self.genesis_block.exists():
            self._render(
                "configtx.yaml",
                self.workdir / "configtx.yaml",
                {
                    "orderer_port": self.ports["orderer"],
                    "orderer_cluster_port": self.ports["orderer_cluster"],
                    "org1_peer_port": self.ports["org1_peer"],
                    "org2_peer_port": self.ports["org2_peer"],
                },
            )
            self.genesis_block.parent.mkdir(parents=True, exist_ok=True)
            tmp_block = self.genesis_block.with_suffix(".tmp")
            self._run(
                [
                    self._tool("configtxgen"),
                    "-profile",
                    "BridgeChannel",
                    "-channelID",
                    self.channel,
                    "-outputBlock",
                    str(tmp_block),
                ],
                env={"FABRIC_CFG_PATH": str(self.workdir)},
                what="configtxgen",
            )
            tmp_block.rename(self.genesis_block)

    # ------------------------------------------------------------------------ orderer

    def _start_orderer(self) -> None:
        cfg_dir = self.workdir / "orderer"
        self._render(
            "orderer.yaml",
            cfg_dir / "orderer.yaml",
            {
                "orderer_port": self.ports["orderer"],
                "cluster_port": self.ports["orderer_cluster"],
                "admin_port": self.ports["orderer_admin"],
                "operations_port": self.ports["orderer_operations"],
                "tls_dir": self._orderer_node_dir / "tls",
                "tls_root_bundle": self._tls_root_bundle(),
                "msp_dir": self._orderer_node_dir / "msp",
                "data_dir": cfg_dir / "data",
            },
        )
        proc = ManagedProcess(
            name="fabric-orderer",
            argv=[self._tool("orderer")],
            log_path=self.logs_dir / "orderer.log",
            env={"FABRIC_CFG_PATH": str(cfg_dir), "FABRIC_LOGGING_SPEC": "info"},
            cwd=cfg_dir,
        )
        self._orderer = self._launch(proc)
        proc.wait_port(self.ports["orderer_admin"], self.start_timeout)
        proc.wait_port(self.ports["orderer"], self.start_timeout)

    def kill_orderer(self) -> None:
        """SIGKILL the orderer (its ledger and Raft log stay on disk), to simulate an outage."""
        if self._orderer is not None:
            self._orderer.kill9()

    def restart_orderer(self) -> None:
        """Start a killed orderer again on the same data and wait until it serves.

        It needs no channel join: the channel participation API restores joined channels
        from the orderer's ledger.
        """
        self._start_orderer()

    def _launch(self, proc: ManagedProcess) -> ManagedProcess:
        """Start ``proc``, remembering where its (appended) log starts for this run."""
        self._log_offsets[proc.name] = proc.log_path.stat().st_size if proc.log_path.exists() else 0
        return proc.start()

    def _osnadmin(self, *args: str) -> str:
        admin_tls = self._orderer_org_dir / "users" / "Admin@example.com" / "tls"
        return self._run(
            [
                self._tool("osnadmin"),
                "channel",
                *args,
                "-o",
                self.orderer_admin_endpoint,
                "--ca-file",
                str(self.orderer_tls_ca_cert),
                "--client-cert",
                str(admin_tls / "client.crt"),
                "--client-key",
                str(admin_tls / "client.key"),
            ],
            what=f"osnadmin channel {args[0]}",
        )

    def _orderer_join(self) -> None:
        assert self._orderer is not None
        listing = self._osnadmin("list")
        if f'"name": "{self.channel}"' not in listing:
            self._osnadmin(
                "join", "--channelID", self.channel, "--config-block", str(self.genesis_block)
            )
        # A single-node raft elects itself after its election timeout; lifecycle transactions
        # fail ("no Raft leader") until then, so wait for the election to be logged.
        self._wait_log(self._orderer, "Raft leader changed: 0 -> ", "orderer raft leader")

    def _wait_log(self, proc: ManagedProcess, needle: str, what: str, *also: str) -> None:
        """Wait until one line of ``proc``'s log contains ``needle`` and every one of ``also``."""

        def seen() -> bool:
            if not proc.alive():
                raise FabricError(f"{proc.name} exited:\n{proc.tail()}")
            try:
                with proc.log_path.open("rb") as log:
                    log.seek(self._log_offsets.get(proc.name, 0))
                    text = log.read().decode(errors="replace")
            except FileNotFoundError:
                return False
            return any(
                needle in line and all(a in line for a in also) for line in text.splitlines()
            )

        try:
            wait_until(seen, self.start_timeout, what, interval=0.1)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- {proc.name} log tail ---\n{proc.tail()}") from exc

    # -------------------------------------------------------------------------- peers

    def kill_peer(self, org_name: str) -> None:
        """SIGKILL one organisation's peer (its ledger stays on disk), to simulate an outage."""
        self._peers[org_name].kill9()

    def restart_peer(self, org_name: str) -> None:
        """Start a killed peer again on the same ledger data and wait until it is healthy.

        It needs no channel join: it recovers its ledger from disk and catches up from the
        orderer.
        """
        self._start_peer(self.orgs[org_name])

    def _start_peer(self, org: FabricOrg) -> None:
        cfg_dir = self.workdir / org.name.lower()
        self._render(
            "core.yaml",
            cfg_dir / "core.yaml",
            {
                "peer_id": org.peer_host,
                "peer_port": org.peer_port,
                "chaincode_port": org.chaincode_port,
                "operations_port": org.operations_port,
                "tls_dir": org.peer_tls_dir,
                "tls_root_bundle": self._tls_root_bundle(),
                "msp_dir": org.peer_msp_dir,
                "msp_id": org.msp_id,
                "data_dir": cfg_dir / "data",
                "ccaas_builder_dir": CCAAS_BUILDER_DIR,
                "total_query_limit": self.total_query_limit,
            },
        )
        chaincode_client = self.chaincode_ca.issue(f"peer-{org.name.lower()}", client=True)
        proc = ManagedProcess(
            name=f"fabric-peer-{org.name.lower()}",
            argv=[self._tool("peer"), "node", "start"],
            log_path=self.logs_dir / f"peer-{org.name.lower()}.log",
            env={
                "FABRIC_CFG_PATH": str(cfg_dir),
                "FABRIC_LOGGING_SPEC": "info",
                # Read by the ccaas builder's release step (core.yaml propagates them).
                "KSTB_CCAAS_CLIENT_CERT": str(chaincode_client.cert),
                "KSTB_CCAAS_CLIENT_KEY": str(chaincode_client.key),
            },
            cwd=cfg_dir,
        )
        self._peers[org.name] = self._launch(proc)
        proc.wait_port(org.peer_port, self.start_timeout)
        self._wait_healthz(proc, org.operations_port)

    def _tls_root_bundle(self) -> Path:
        """One PEM file with every org's TLS CA (peers' and orderer's)."""
        bundle = self.workdir / "tls-roots.pem"
        pems = [org.tls_ca_cert.read_text() for org in self.orgs.values()]
        pems.append(self.orderer_tls_ca_cert.read_text())
        bundle.write_text("".join(pems))
        return bundle

    def _wait_healthz(self, proc: ManagedProcess, port: int) -> None:
        url = f"http://127.0.0.1:{port}/healthz"

        def healthy() -> bool:
            if not proc.alive():
                raise FabricError(f"{proc.name} exited:\n{proc.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    return int(resp.status) == 200
            except (urllib.error.URLError, OSError):
                return False

        try:
            wait_until(healthy, self.start_timeout, f"{proc.name} /healthz", interval=0.1)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- {proc.name} log tail ---\n{proc.tail()}") from exc

    def peer_env(self, org: FabricOrg | str, user: str = "Admin") -> dict[str, str]:
        """Environment for the ``peer`` CLI acting as ``user`` of ``org`` against its peer,
        presenting ``user``'s TLS client certificate to every peer it dials."""
        o = org if isinstance(org, FabricOrg) else self.org(org)
        return {
            "FABRIC_CFG_PATH": str(self.workdir / o.name.lower()),
            "CORE_PEER_LOCALMSPID": o.msp_id,
            "CORE_PEER_MSPCONFIGPATH": str(o.user_msp_dir(user)),
            "CORE_PEER_ADDRESS": o.peer_endpoint,
            "CORE_PEER_TLS_ENABLED": "true",
            "CORE_PEER_TLS_ROOTCERT_FILE": str(o.tls_ca_cert),
            "CORE_PEER_TLS_CLIENTAUTHREQUIRED": "true",
            "CORE_PEER_TLS_CLIENTCERT_FILE": str(o.user_tls_cert(user)),
            "CORE_PEER_TLS_CLIENTKEY_FILE": str(o.user_tls_key(user)),
            "FABRIC_LOGGING_SPEC": "warning",
        }

    def peer_cli(
        self,
        org: FabricOrg | str,
        args: Sequence[str],
        user: str = "Admin",
        timeout: float = CLI_TIMEOUT,
    ) -> str:
        """Run ``peer <args>`` as ``user`` of ``org``; return its output or raise FabricError."""
        if self._bin is None:
            self._bin = ensure_fabric_binaries(self.build_if_missing)
        return self._run(
            [self._tool("peer"), *args],
            env=self.peer_env(org, user),
            timeout=timeout,
            what=f"peer {' '.join(args[:3])}",
        )

    def _peer_join(self, org: FabricOrg) -> None:
        joined = self.peer_cli(org, ["channel", "list"])
        if self.channel not in joined.split():
            self.peer_cli(org, ["channel", "join", "-b", str(self.genesis_block)])
        proc = self._peers[org.name]

        def has_block() -> bool:
            if not proc.alive():
                raise FabricError(f"{proc.name} exited:\n{proc.tail()}")
            info = self.peer_cli(org, ["channel", "getinfo", "-c", self.channel])
            return '"height":' in info and '"height":0' not in info

        try:
            wait_until(has_block, self.start_timeout, f"{org.name} peer ledger", interval=0.2)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- {proc.name} log tail ---\n{proc.tail()}") from exc

    def _wait_gossip(self) -> None:
        """Wait until each peer sees the other org's peer (needed by Gateway discovery)."""
        for org in self.orgs.values():
            others = [o for o in self.orgs.values() if o is not org]
            proc = self._peers[org.name]
            for other in others:
                self._wait_log(
                    proc,
                    "peers went online",
                    f"{org.name} gossip sees {other.name}",
                    other.peer_endpoint,
                )

    def orderer_args(self, org: FabricOrg | str = "Org1", user: str = "Admin") -> list[str]:
        """``peer`` CLI flags that address the orderer with mutual TLS, presenting ``user``
        of ``org``'s TLS client certificate."""
        o = org if isinstance(org, FabricOrg) else self.org(org)
        return [
            "-o",
            self.orderer_endpoint,
            "--tls",
            "--cafile",
            str(self.orderer_tls_ca_cert),
            "--clientauth",
            "--certfile",
            str(o.user_tls_cert(user)),
            "--keyfile",
            str(o.user_tls_key(user)),
        ]

    def endorsing_peer_args(self) -> list[str]:
        """``peer`` CLI flags naming every org's peer (with its TLS root) as endorsers."""
        args: list[str] = []
        for org in self.orgs.values():
            args += [
                "--peerAddresses",
                org.peer_endpoint,
                "--tlsRootCertFiles",
                str(org.tls_ca_cert),
            ]
        return args

    # ----------------------------------------------------------------------- chaincode
    # The lifecycle layer (bridge/devnet/fabric/lifecycle.py), as methods.
    ccaas_package = staticmethod(lifecycle.ccaas_package)
    ccaas_package_id = staticmethod(lifecycle.ccaas_package_id)
    committed = lifecycle.committed
    deploy_ccaas = lifecycle.deploy_ccaas
