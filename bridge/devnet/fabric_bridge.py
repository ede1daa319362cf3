"""A Fabric ledger running the bridge chaincode, for the demo, the tests and benchmarks.

Roles on the dev network: Org1's admins administer the endpoint's tokens (the issuer side);
relayers, instruction keys and the governance change with the approval of admins of
``admin_quorum`` of the ``admin_orgs`` (default: Org1 alone; see ADR 0012). Org1's User1 is
the chain operator's relayer, and Org2's User1 is the committee's read-only identity.
Everyone reaches the ledger through Org1's peer (the one in network.toml), each over its own
connection with its own identity.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from bridge.config import Credentials, LedgerAuth
from bridge.core.digests import init_parameters_digest
from bridge.core.words import fabric_bridge_word
from bridge.devnet.anvil import DevAccount
from bridge.devnet.fabric import FabricNetwork, chaincode_python
from bridge.devnet.processes import REPO_ROOT, ManagedProcess, free_port
from bridge.domain.committee import Committee
from bridge.domain.errors import Unavailable
from bridge.domain.flow import FlowLimit
from bridge.ledgers.fabric.errors import TransactionInvalid
from bridge.ledgers.fabric.gateway import CommitResult, GatewayClient, PreparedTransaction
from bridge.ledgers.fabric.identity import SigningIdentity
from bridge.logfields import get_logger

CHAINCODE_DIR = REPO_ROOT / "contracts" / "fabric"


INIT_PIN_FILE_ENV = "KSTB_INIT_PARAMS_SHA256_FILE"


def init_pin_file(net: FabricNetwork, name: str) -> Path:
    """Where the devnet's chaincode server ``name`` reads its pinned Init digest."""
    return net.workdir / "chaincode" / f"{name}.init-pin"


def pin_init(net: FabricNetwork, name: str, init_args: Sequence[str]) -> None:
    """Pin the Init arguments the organisations agreed to (the server reads it at Init)."""
    path = init_pin_file(net, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(init_parameters_digest(list(init_args)) + "\n", encoding="ascii")


def start_bridge_chaincode(
    net: FabricNetwork, name: str, init_args: Sequence[str] | None = None, tls: bool = True
) -> ManagedProcess:
    """Deploy the bridge chaincode as ``name`` (both orgs endorse) and serve it; returns the
    chaincode server process once it listens.

    With ``tls`` (the default) the server speaks TLS and accepts only clients with a
    certificate from the network's chaincode CA: the two peers.

    The definition is committed with ``--init-required``: the first invocation must be an
    Init (``is_init``), and no other Init is accepted after it. The server accepts only the
    Init arguments pinned in its pin file (:func:`pin_init`; given ``init_args`` they are
    pinned now): Init is refused (WrongInitParameters) with any other arguments or before a
    pin exists. (The devnet serves both organisations' peers from one server, so one pin
    stands for both; in production each organisation runs its own server pinned to what it
    agreed to, and the AND endorsement policy needs every one of them.)
    """
    port = free_port()
    address = f"127.0.0.1:{port}"
    package_id = net.deploy_ccaas(name, address, tls=tls, init_required=True)
    if init_args is not None:
        pin_init(net, name, init_args)
    env = {
        "PYTHONPATH": str(CHAINCODE_DIR),
        "CHAINCODE_SERVER_ADDRESS": address,
        "CORE_CHAINCODE_ID": package_id,
        INIT_PIN_FILE_ENV: str(init_pin_file(net, name)),
    }
    if tls:
        env.update(net.chaincode_server_tls_env())
    proc = ManagedProcess(
        name=f"chaincode-{name}",
        argv=[str(chaincode_python()), "-m", "kstb_chaincode"],
        log_path=net.logs_dir / f"chaincode-{name}.log",
        env=env,
    ).start()
    proc.wait_port(port, timeout=30)
    return proc


def org_gateway_client(
    net: FabricNetwork, org: str, identity: SigningIdentity, user: str = "User1"
) -> GatewayClient:
    """A Gateway client to ``org``'s peer signing as ``identity``, presenting ``user``'s TLS
    client certificate (the peers require one)."""
    o = net.org(org)
    return GatewayClient(
        o.peer_endpoint,
        o.tls_ca_cert,
        o.peer_host,
        identity,
        net.channel,
        tls_client_cert=o.user_tls_cert(user),
        tls_client_key=o.user_tls_key(user),
    )


ENDORSE_ATTEMPTS = 10
"""How often the devnet asks for a transaction's endorsements before giving up."""
ENDORSE_WAIT_S = 0.2
"""Seconds before the second ask; each wait doubles, up to :data:`ENDORSE_WAIT_MAX_S` (about
26 s over all the attempts)."""
ENDORSE_WAIT_MAX_S = 5.0
"""The longest wait between two asks: a gossip alive interval of the devnet's peers."""


def _log_ask_again(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    get_logger().warning("endorsements asked again", attempt=state.attempt_number, error=str(error))


T = TypeVar("T")


async def until_agreed(call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, one idempotent write to the devnet's Fabric network (an adapter's step, a
    batch), asked again while it raises Unavailable, as a relayer does (up to
    :data:`ENDORSE_ATTEMPTS` times, each retry logged, the waits growing; then the last
    Unavailable is raised). For the faults :func:`endorse_agreed` names, which a test's own
    write meets as well; a refusal (``LedgerRejected``) is raised at once, never retried.
    Not for a test that expects Unavailable, nor one that counts read conflicts
    (``TransactionInvalid`` is an Unavailable)."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(Unavailable),
        stop=stop_after_attempt(ENDORSE_ATTEMPTS),
        wait=wait_exponential(multiplier=ENDORSE_WAIT_S, max=ENDORSE_WAIT_MAX_S),
        before_sleep=_log_ask_again,
        reraise=True,
    ):
        with attempt:
            return await call()
    raise AssertionError("unreachable")  # pragma: no cover - tenacity returns or raises


async def endorse_agreed(
    client: GatewayClient, chaincode: str, fn: str, args: Sequence[str], is_init: bool = False
) -> PreparedTransaction:
    """Both organisations' endorsements of ``fn(*args)``, asked again (up to
    :data:`ENDORSE_ATTEMPTS` times, each retry logged, the waits growing) while the gateway
    reports them unavailable.

    The two organisations' peers simulate one after the other, and a block committed on one
    of them in between (the devnet's own waves of concurrent submits, or the bridge's
    traffic during a benchmark's setup) makes them read different state: the gateway then
    answers ABORTED (ProposalResponsePayloads do not match). And a gateway whose discovery
    misses the other organisation's peer for a moment (its gossip membership, on a loaded
    host) answers FAILED_PRECONDITION (no combination of peers can be derived which satisfy
    the endorsement policy) until the next alive message. Nothing was ordered, and each
    ask is a new transaction id, so asking again is safe; a refusal by the chaincode is
    never retried. A mismatch on every ask (a chaincode that is not deterministic) still
    fails."""
    return await until_agreed(lambda: client.endorse(chaincode, fn, list(args), is_init=is_init))


async def submit_agreed(
    client: GatewayClient, chaincode: str, fn: str, args: Sequence[str], is_init: bool = False
) -> CommitResult:
    """:func:`endorse_agreed`, then order the transaction and wait for its VALID commit
    (:meth:`GatewayClient.submit_prepared`)."""
    prepared = await endorse_agreed(client, chaincode, fn, args, is_init)
    return await client.submit_prepared(prepared)


async def wait_for_peers(net: FabricNetwork, block_number: int, limit_s: float = 15.0) -> None:
    """Wait until every org's peer has committed ``block_number``.

    A submit returns once the gateway's own peer committed; the next transaction is endorsed
    by both orgs' peers, and one that lags a block behind would endorse on stale state.
    """
    clients = []
    for org in ("Org1", "Org2"):
        o = net.org(org)
        ident = SigningIdentity.from_files(o.msp_id, o.user_cert(), o.user_key())
        clients.append(org_gateway_client(net, org, ident))
    try:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + limit_s
        for client in clients:
            while await client.block_height() <= block_number:
                if loop.time() > give_up:
                    raise TimeoutError(f"peers did not reach block {block_number} in {limit_s}s")
                await asyncio.sleep(0.02)
    finally:
        for client in clients:
            await client.close()


@dataclass
class FabricBridgeLedger:
    """One Fabric ledger with the bridge chaincode, and synchronous admin helpers.

    The helpers mirror the EVM devnet handle (``make_holder``, ``balance``, ...), so tests
    and the demo treat both kinds alike.
    """

    name: str
    workdir: Path
    chaincode: str = "kstb"
    network: FabricNetwork | None = None
    process: ManagedProcess | None = None
    isins: list[str] = field(default_factory=list)
    before_issue: Callable[[str, int], None] | None = None
    """Called with (isin, units) before any issue: the devnet registers the issuance."""
    genesis_hash: bytes = b""
    """The channel's genesis block hash: this ledger's network word (protocol v2)."""
    # ---- admin
    admin_orgs: tuple[str, ...] = ("Org1",)
    """Organisations whose admins approve relayers, instruction keys and governance changes."""
    admin_quorum: int = 1
    """How many of ``admin_orgs`` must approve such a change (k)."""

    @property
    def net(self) -> FabricNetwork:
        """The running network."""
        assert self.network is not None, "start() first"
        return self.network

    # -- lifecycle -------------------------------------------------------------------------
    def start(
        self, committee: Committee, isins: Sequence[str], instructors: Sequence[str] = ()
    ) -> FabricBridgeLedger:
        """Start the network, deploy and initialise the chaincode, register ``isins``, grant
        the relayer identity its role and register the brokerage ``instructors`` (0x
        addresses) as instruction keys."""
        self.network = FabricNetwork(self.workdir / f"fabric-{self.name}").start()
        self.genesis_hash = self._run(lambda client: client.genesis_hash())
        committee_json = json.dumps(
            {
                "epoch": committee.epoch,
                "threshold": committee.threshold,
                "members": ["0x" + m.hex() for m in committee.members],
            }
        )
        init_args = [
            self.name,
            self.chaincode,
            committee_json,
            "0x" + self.genesis_hash.hex(),
            self.governance_json,
        ]
        self.process = start_bridge_chaincode(self.net, self.chaincode, init_args)
        relayer = SigningIdentity.from_files(**self._files(self.relayer_credentials))
        self._admin_calls([("Init", init_args)] + [("RegisterSecurity", [isin]) for isin in isins])
        self.consortium_calls(
            [("SetRelayer", [relayer.chaincode_identity(), "true"])]
            + [("SetInstructor", [key.lower(), "true"]) for key in instructors]
        )
        self.isins = list(isins)
        return self

    def kill_chaincode(self) -> None:
        """SIGKILL the chaincode server (chaincode as a service: its state is on the peers)."""
        if self.process is not None:
            self.process.kill9()

    def restart_chaincode(self) -> None:
        """Serve the chaincode again at the address the peers know and wait until it listens."""
        assert self.process is not None, "start() first"
        self.process.start()
        address = (self.process.env or {})["CHAINCODE_SERVER_ADDRESS"]
        self.process.wait_port(int(address.rsplit(":", 1)[1]), timeout=30)

    def stop(self) -> None:
        """Stop the chaincode server and the network."""
        if self.process is not None:
            self.process.stop()
        if self.network is not None:
            self.network.stop()

    # -- identities and configuration ------------------------------------------------------
    @property
    def governance_json(self) -> str:
        """The governance Init pins: Org1 issues; ``admin_quorum`` of ``admin_orgs`` approve
        relayers, instruction keys and governance changes (MSP ids, ascending)."""
        orgs = sorted(self.net.org(o).msp_id for o in self.admin_orgs)
        return json.dumps(
            {"issuer": self.net.org("Org1").msp_id, "admin_orgs": orgs, "quorum": self.admin_quorum}
        )

    def _credentials(self, org: str, user: str) -> Credentials:
        o = self.net.org(org)
        return Credentials(key_file=o.user_key(user), cert_file=o.user_cert(user), msp_id=o.msp_id)

    @staticmethod
    def _files(c: Credentials) -> dict[str, Any]:
        return {"msp_id": c.msp_id, "cert_path": c.cert_file, "key_path": c.key_file}

    @property
    def relayer_credentials(self) -> Credentials:
        """The chain operator's relayer identity (Org1 User1)."""
        return self._credentials("Org1", "User1")

    @property
    def verifier_credentials(self) -> Credentials:
        """The committee's read-only identity (Org2 User1)."""
        return self._credentials("Org2", "User1")

    def ledger_auth(self, org: str, user: str = "User1") -> LedgerAuth:
        """``[ledger_auth]`` for ``user`` of ``org``: its TLS client certificate and key."""
        o = self.net.org(org)
        return LedgerAuth(tls_cert_file=o.user_tls_cert(user), tls_key_file=o.user_tls_key(user))

    @property
    def relayer_ledger_auth(self) -> LedgerAuth:
        """The relayer's TLS client certificate for the peers (Org1 User1)."""
        return self.ledger_auth("Org1")

    @property
    def verifier_ledger_auth(self) -> LedgerAuth:
        """The committee's TLS client certificate for the peers (Org2 User1)."""
        return self.ledger_auth("Org2")

    @property
    def bridge_word(self) -> bytes:
        """The endpoint's identity in claim digests."""
        return fabric_bridge_word(self.net.channel, self.chaincode)

    def ledger_entry(self, org: str = "Org1", block_interval: float = 0.25) -> dict[str, Any]:
        """This ledger's ``[[ledgers]]`` entry for network.toml (reached through ``org``'s peer)."""
        o = self.net.org(org)
        return {
            "id": self.name,
            "kind": "fabric",
            "rpc_url": o.peer_endpoint,
            "bridge": self.chaincode,
            "channel": self.net.channel,
            "tls_ca": str(o.tls_ca_cert),
            "tls_server_name": o.peer_host,
            "block_interval": block_interval,
            "genesis_hash": "0x" + self.genesis_hash.hex(),
        }

    # ---- DevLedger (bridge.devnet.ledger): the devnet's kind-independent view
    @property
    def kind(self) -> str:
        """``fabric``."""
        return "fabric"

    def describe(self) -> list[str]:
        """Channel, organisations and chaincode."""
        return [
            f"Fabric channel {self.net.channel}, {len(self.net.orgs)} orgs, Raft orderer",
            f"bridge chaincode {self.chaincode!r} (endorsement by both orgs)",
        ]

    def relayer_entry(self) -> dict[str, Any]:
        """The relayer's MSP identity (Org1 User1) and poll interval."""
        creds = self.relayer_credentials
        return {
            "key_file": str(creds.key_file),
            "cert_file": str(creds.cert_file),
            "msp_id": creds.msp_id,
            "poll_interval": 0.1,
        }

    def read_identity(self) -> dict[str, Any] | None:
        """The committee's read identity (Org2 User1): Fabric signs every query."""
        creds = self.verifier_credentials
        return {
            "msp_id": creds.msp_id,
            "cert_file": str(creds.cert_file),
            "key_file": str(creds.key_file),
        }

    def node_auth(self, role: str) -> dict[str, str]:
        """The TLS client certificate of the ``relayer`` (Org1) or ``verifier`` (Org2)."""
        auth = self.relayer_ledger_auth if role == "relayer" else self.verifier_ledger_auth
        return {"tls_cert_file": str(auth.tls_cert_file), "tls_key_file": str(auth.tls_key_file)}

    def reader_override(self) -> dict[str, Any] | None:
        """Org2's peer."""
        return self.endpoint_override("Org2")

    def faults(self) -> Mapping[str, tuple[Callable[[], object], Callable[[], object]]]:
        """Org1's peer (the one in network.toml) or the orderer SIGKILLed and restarted on
        its data, or the chaincode server SIGKILLed and served again."""
        net = self.net
        org = next(iter(net.orgs))
        return {
            "peer": (partial(net.kill_peer, org), partial(net.restart_peer, org)),
            "orderer": (net.kill_orderer, net.restart_orderer),
            "chaincode": (self.kill_chaincode, self.restart_chaincode),
        }

    def endpoint_of(self, org: str) -> str:
        """``org``'s peer Gateway endpoint."""
        return self.net.org(org).peer_endpoint

    def endpoint_override(self, org: str) -> dict[str, Any]:
        """A verifier's ``rpc_overrides`` entry for reading through ``org``'s peer."""
        o = self.net.org(org)
        return {
            "url": o.peer_endpoint,
            "tls_ca": str(o.tls_ca_cert),
            "tls_server_name": o.peer_host,
        }

    # -- synchronous helpers (one short-lived client per call) -----------------------------
    def _run(self, make: Any, org: str = "Org1") -> Any:
        async def go() -> Any:
            o = self.net.org(org)
            ident = SigningIdentity.from_msp_dir(o.msp_id, o.admin_msp_dir)
            client = org_gateway_client(self.net, org, ident, user="Admin")
            try:
                return await make(client)
            finally:
                await client.close()

        return asyncio.run(go())

    def _admin_calls(self, calls: Sequence[tuple[str, Sequence[str]]], org: str = "Org1") -> None:
        async def run(client: GatewayClient) -> None:
            for fn, args in calls:
                # Init is the definition's one --init-required invocation.
                result = await submit_agreed(client, self.chaincode, fn, args, fn == "Init")
                await wait_for_peers(self.net, result.block_number)

        self._run(run, org)

    # ---- admin
    def consortium_calls(self, calls: Sequence[tuple[str, Sequence[str]]]) -> None:
        """Send each admin change (SetRelayer, SetInstructor, SetAdmin) as the Admin of the
        first ``admin_quorum`` of ``admin_orgs`` in turn, so that it applies (ADR 0012)."""
        for fn, args in calls:
            for org in self.admin_orgs[: self.admin_quorum]:
                self._admin_calls([(fn, args)], org)

    def admin_calls_as(self, org: str, calls: Sequence[tuple[str, Sequence[str]]]) -> None:
        """Send ``calls`` as ``org``'s Admin (tests of the organisation-bound admin)."""
        self._admin_calls(calls, org)

    def query(self, fn: str, *args: str) -> Any:
        """Evaluate a query function of the chaincode (JSON answer)."""
        return self._query(fn, *args)

    # ---- parking
    def release_parked(self, transfer_id: bytes, holder: str) -> None:
        """Deliver the units parked by ``transfer_id`` to ``holder`` (the issuer's call)."""
        self._admin_calls([("ReleaseParked", ["0x" + transfer_id.hex(), holder.lower()])])

    def parked(self, transfer_id: bytes) -> int:
        """Units parked by ``transfer_id`` and not yet released."""
        return int(self._query("Parked", "0x" + transfer_id.hex())["amount"])

    # ---- exact reads (ADR 0024)
    def count_supply(self, isin: str, page: int = 1000) -> int:
        """Run ``CountSupply`` as the issuer's admin until the security's supply counters
        are complete (state written by a chaincode from before them); returns the number of
        steps (1 when already complete). Each step is committed on both peers first."""
        steps = 0
        while True:
            steps += 1
            self._admin_calls([("CountSupply", [isin, str(page)])])
            if self._query("SupplyCounting", isin)["done"]:
                return steps

    def _query(self, fn: str, *args: str) -> Any:
        async def run(client: GatewayClient) -> Any:
            return json.loads(await client.evaluate(self.chaincode, fn, list(args)))

        return self._run(run)

    def set_instructor(self, key: str, enabled: bool = True) -> None:
        """Register (or remove) brokerage instruction key ``key`` (a 0x address)."""
        self.consortium_calls([("SetInstructor", [key.lower(), "true" if enabled else "false"])])

    # ---- depository halt

    def set_depository(self, key: str) -> None:
        """``SetDepository``: install the depository's key (a 0x address; admin, once)."""
        self._admin_calls([("SetDepository", [key.lower()])])

    def halt_status(self, security_word: bytes) -> dict[str, object]:
        """The chaincode's ``HaltStatus`` of a security word (zero: the ledger flag)."""
        return dict(self._query("HaltStatus", "0x" + security_word.hex()))

    def is_instructor(self, key: str) -> bool:
        """Whether the endpoint accepts locks instructed by ``key``."""
        return bool(self._query("IsInstructor", key.lower())["instructor_registered"])

    def set_eligible(self, isin: str, holder: str, eligible: bool = True) -> None:
        """Add ``holder`` to (or remove it from) the eligible holders."""
        self._admin_calls(
            [("SetEligible", [isin, holder.lower(), "true" if eligible else "false"])]
        )

    def set_frozen(self, isin: str, holder: str, frozen: bool = True) -> None:
        """Freeze or unfreeze ``holder``."""
        self._admin_calls([("SetFrozen", [isin, holder.lower(), "true" if frozen else "false"])])

    def set_paused(self, isin: str, paused: bool) -> None:
        """Pause or unpause the security on this ledger."""
        self._admin_calls([("SetPaused", [isin, "true" if paused else "false"])])

    # ---- flow limits (ADR 0010)
    def set_flow_limit(self, isin: str, counterpart: str, limit: FlowLimit) -> None:
        """``SetFlowLimit`` for the lane (``isin``, ``counterpart`` ledger name), as the
        admin; ``FlowLimit()`` removes the lane's limit."""
        args = [
            isin,
            counterpart,
            str(limit.outbound_capacity),
            str(limit.inbound_capacity),
            str(limit.window),
            str(limit.share_bps),
            str(limit.large_threshold),
            str(limit.large_delay),
        ]
        self._admin_calls([("SetFlowLimit", args)])

    def make_holder(self, isin: str, units: int = 0) -> DevAccount:
        """A new eligible holder (its address is a 20-byte account id), issued ``units``."""
        holder = DevAccount.generate()
        calls: list[tuple[str, Sequence[str]]] = [
            ("SetEligible", [isin, holder.address.lower(), "true"])
        ]
        if units:
            if self.before_issue is not None:
                self.before_issue(isin, units)
            calls.append(("Issue", [isin, holder.address.lower(), str(units)]))
        self._admin_calls(calls)
        return holder

    def issue(self, isin: str, holder: str, units: int, register: bool = True) -> None:
        """Issue ``units`` to an eligible holder (``register=False``: without telling the
        depository, i.e. an out-of-band issue the supply feed must catch)."""
        if register and self.before_issue is not None:
            self.before_issue(isin, units)
        self._admin_calls([("Issue", [isin, holder.lower(), str(units)])])

    def balance(self, isin: str, holder: str) -> int:
        """A holder's balance."""
        return int(self._query("HolderStatus", isin, holder.lower())["balance"])

    def total_supply(self, isin: str) -> int:
        """Units in existence on this ledger (holders and escrow)."""
        return int(self._query("Supply", isin)["total_supply"])

    def escrowed(self, isin: str) -> int:
        """Units held in the bridge's escrow."""
        return int(self._query("Supply", isin)["escrowed"])

    # ---- bench hooks (optional DevLedger members, ADR 0019) -------------------------------
    def fund_holders(self, isin: str, holders: Sequence[str], units: int) -> None:
        """Make every holder eligible for ``isin``, then issue it ``units`` (not registered
        with the depository). Each wave is submitted concurrently (one holder record per
        transaction, so no MVCC conflicts inside a wave); the issue wave follows the
        eligibility wave's commits. An issue also writes one of the security's supply counter
        shards (ADR 0024), so issues that picked the same shard in one block conflict: those
        (TransactionInvalid, nothing applied) are resubmitted until every one committed. Each
        wave waits for every organisation's peer to commit it before the next is endorsed (a
        peer a block behind endorsed an Issue on a holder not yet eligible there:
        "ProposalResponsePayloads do not match")."""

        async def waves(client: GatewayClient) -> None:
            async with asyncio.timeout(120):
                for fn, extra in (("SetEligible", "true"), ("Issue", str(units))):
                    todo = list(holders)
                    while todo:
                        results = await asyncio.gather(
                            *(
                                submit_agreed(client, self.chaincode, fn, [isin, h.lower(), extra])
                                for h in todo
                            ),
                            return_exceptions=True,
                        )
                        for r in results:
                            if isinstance(r, BaseException) and not isinstance(
                                r, TransactionInvalid
                            ):
                                raise r
                        todo = [
                            h
                            for h, r in zip(todo, results, strict=True)
                            if isinstance(r, TransactionInvalid)
                        ]
                        last = max(
                            (r.block_number for r in results if not isinstance(r, BaseException)),
                            default=-1,
                        )
                        if last >= 0:  # the next wave is endorsed by every org's peer
                            await wait_for_peers(self.net, last)

        self._run(waves)

    def commit_probe(self, isin: str, n: int) -> list[float]:
        """Seconds of ``n`` sequential SetEligible submits on one warm admin client (endorse
        by both orgs, order, wait for the VALID commit); one untimed warm-up first."""
        import time

        async def probe(client: GatewayClient) -> list[float]:
            samples = []
            async with asyncio.timeout(180):
                for i in range(n + 1):
                    args = [isin, DevAccount.generate().address.lower(), "true"]
                    began = time.perf_counter()
                    await submit_agreed(client, self.chaincode, "SetEligible", args)
                    if i:
                        samples.append(time.perf_counter() - began)
            return samples

        result: list[float] = self._run(probe)
        return result

    def interval(self) -> dict[str, Any]:
        """The orderer's BatchTimeout (the running network's rendered configtx.yaml)."""
        rendered = self.net.workdir / "configtx.yaml"
        seconds, written, line = batch_timeout(rendered)
        source = f"orderer BatchTimeout: {written} ({rendered}:{line})"
        return {"kind": "batch", "seconds": seconds, "source": source}

    def pids(self) -> dict[str, int]:
        """The peers', orderer's and chaincode server's pids."""
        pids = dict(self.net.pids()) if self.network is not None else {}
        if self.process is not None and self.process.alive():
            pids[self.process.name] = self.process.pid
        return pids


_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float:
    """Seconds of a Go duration such as ``250ms``, ``2s`` or ``1m30s``."""
    import re

    parts = re.findall(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ValueError(f"not a Go duration: {text!r}")
    return sum(float(n) * _GO_UNITS[u] for n, u in parts)


def batch_timeout(path: Path) -> tuple[float, str, int]:
    """The orderer's BatchTimeout in ``path`` (a configtx.yaml): (seconds, as written, line)."""
    import re

    for number, line in enumerate(path.read_text().splitlines(), start=1):
        m = re.match(r"\s*BatchTimeout:\s*(\S+)\s*(#.*)?$", line)
        if m:
            return parse_go_duration(m.group(1).strip("\"'")), m.group(1), number
    raise ValueError(f"no BatchTimeout in {path}")
