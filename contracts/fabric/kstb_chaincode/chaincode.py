"""The fabric-chaincode-python glue: peer messages -> ``protocol.execute`` -> responses.

Responsibilities:

- identify the caller from the proposal's creator (``<mspid>:<sha256 hex of the cert PEM>``)
  and the channel, and (for ``Init``) the name the chaincode is invoked under;
- run the synchronous protocol in a worker thread whose key-value reads and writes are
  bridged to the shim's async ``GetState``/``PutState`` on the event loop;
- map ``ChaincodeError`` to an error response whose message is ``"<ErrorName>: <JSON>"``, the
  JSON object holding ``reason``, ``detail`` and typed ``figures`` (ADR 0015),
  and a success to a response whose payload is the JSON result;
- attach the (single) chaincode event to the COMPLETED message.

Work-arounds for fabric-chaincode-python 2.5.4 (see :class:`KstbHandler`):

- its Handler never copies ``stub.set_event`` events into the COMPLETED message, so events
  would be silently lost;
- ``stub.get_state`` returns the payload of the peer's reply even when the reply is an
  ERROR message, so an error text could be read as a value;
- an exception raised by the chaincode kills the handling task without any reply, leaving
  the peer waiting for its execute timeout;
- it handles every peer message in its own task, and those tasks write to the gRPC stream
  concurrently; grpc.aio allows one write at a time, so with two proposals in flight a write
  fails (GRPC_CALL_ERROR_TOO_MANY_OPERATIONS). Writes are serialized here;
- its loop formats every message into log strings (eagerly, whatever the log level) and
  spawns a task even for a state call's reply: :meth:`KstbHandler.chat_with_peer` replaces
  it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from typing import Any

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID
from fabric_chaincode_python.fabric_shim.handler import STATES, Handler
from fabric_chaincode_python.fabric_shim.interfaces import Chaincode
from fabric_chaincode_python.fabric_shim.iterators import StateQueryIterator
from fabric_chaincode_python.fabric_shim.msg_queue_handler import MsgQueueHandler
from fabric_chaincode_python.fabric_shim.response import ResponseCode, error, success
from fabric_chaincode_python.fabric_shim.stub import ChaincodeStub
from fabric_protos.ledger.queryresult import kv_query_result_pb2 as kv_pb2
from fabric_protos.peer import chaincode_pb2 as cc_pb2
from fabric_protos.peer import chaincode_shim_pb2 as shim_pb2
from fabric_protos.peer import chaincode_shim_pb2_grpc as shim_grpc
from fabric_protos.peer import proposal_response_pb2 as pr_pb2

from kstb_chaincode.protocol import ChaincodeError, Context, execute, identity_of

LOG = logging.getLogger("kstb_chaincode")
INIT_PIN_ENV = "KSTB_INIT_PARAMS_SHA256"
"""SECURITY: the SHA-256 of the only Init arguments this server accepts (see protocol.init)."""
INIT_PIN_FILE_ENV = "KSTB_INIT_PARAMS_SHA256_FILE"
"""Or a file holding it, read at each Init (the organisation writes it once it agreed)."""


def init_pin() -> str | None:
    """The pinned Init digest of this server's organisation, or None (Init is refused)."""
    pin = os.environ.get(INIT_PIN_ENV, "").strip()
    if pin:
        return pin
    path = os.environ.get(INIT_PIN_FILE_ENV, "")
    if path:
        try:
            with open(path, encoding="ascii") as fh:
                return fh.read().strip() or None
        except OSError:
            return None
    return None


STATE_TIMEOUT = 60.0
"""Seconds a worker thread waits for one GetState/PutState round trip to the peer."""


class _StubStore:
    """``protocol.KeyValue`` over a stub, callable from a worker thread (not the loop)."""

    def __init__(self, stub: ChaincodeStub, loop: asyncio.AbstractEventLoop) -> None:
        self._stub = stub
        self._loop = loop

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(STATE_TIMEOUT)

    def get(self, key: str) -> bytes | None:
        handler = self._stub.client
        if isinstance(handler, KstbHandler):
            value = self._call(
                handler.get_state_checked(key, self._stub.channel_id, self._stub.tx_id)
            )
        else:
            value = self._call(self._stub.get_state(key))
        return bytes(value) if value else None

    def put(self, key: str, value: bytes) -> None:
        _check(self._call(self._stub.put_state(key, value)), "PutState", key)

    def delete(self, key: str) -> None:
        _check(self._call(self._stub.delete_state(key)), "DelState", key)

    def scan(self, prefix: str) -> list[tuple[str, bytes]]:
        return list(self._call(self._scan(prefix)))

    def scan_after(self, prefix: str, after: str, limit: int) -> list[tuple[str, bytes]]:
        # The peer may cut the range short (totalQueryLimit) without saying so: the caller
        # treats only an empty answer as the end (protocol ``# ---- exact reads``).
        return list(self._call(self._scan(prefix, after, limit)))

    async def _scan(
        self, prefix: str, after: str = "", limit: int | None = None
    ) -> list[tuple[str, bytes]]:
        # All protocol keys are printable ASCII (< 0x7f), so [prefix, prefix + DEL) is the
        # prefix range. The reply is checked before the shim's iterator parses it.
        stub = self._stub
        # Strictly after ``after``: ``after + NUL`` is the least key above it (a range bound
        # only, never stored; the peer rejects NUL only as a key's first character).
        start = after + "\x00" if after > prefix else prefix
        raw = await stub.client.handle_get_state_by_range(
            "", start, prefix + "\x7f", stub.channel_id, stub.tx_id
        )
        _check(raw, "GetStateByRange", prefix)
        iterator = StateQueryIterator(
            handler=stub.client,
            channel_id=stub.channel_id,
            tx_id=stub.tx_id,
            initial_response=raw,
            response_factory=shim_pb2.QueryResponse.FromString,
            parser=lambda qrb: kv_pb2.KV.FromString(qrb.resultBytes),
        )
        out: list[tuple[str, bytes]] = []
        async for kv in iterator:
            out.append((str(kv.key), bytes(kv.value)))
            if limit is not None and len(out) >= limit:
                break  # the peer closes the transaction's iterators when it ends
        return out


def _check(reply: Any, what: str, key: str) -> None:
    if getattr(reply, "type", None) == shim_pb2.ChaincodeMessage.ERROR:
        raise RuntimeError(f"{what} {key}: {bytes(reply.payload).decode(errors='replace')}")


def caller_identity(stub: ChaincodeStub) -> str:
    """The creator of the proposal as ``<mspid>:<sha256 hex of its certificate PEM>``."""
    mspid, id_bytes = _creator(stub)
    return identity_of(mspid, id_bytes)


def caller_roles(stub: ChaincodeStub) -> frozenset[str]:
    """The NodeOU roles (organisational units) in the creator's certificate."""
    _, id_bytes = _creator(stub)
    try:
        cert = x509.load_pem_x509_certificate(id_bytes)
    except ValueError:
        return frozenset()
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return frozenset(str(u.value).lower() for u in units)


def _creator(stub: ChaincodeStub) -> tuple[str, bytes]:
    creator = stub.get_creator() or {}
    mspid, id_bytes = creator.get("mspid"), creator.get("idBytes")
    if not mspid or not id_bytes:
        raise ChaincodeError("NoIdentity", "the proposal carries no creator")
    return str(mspid), bytes(id_bytes)


def invoked_chaincode_name(stub: ChaincodeStub) -> str | None:
    """The chaincode name the proposal addresses (None when it cannot be read)."""
    try:
        decoded = stub.signed_proposal_pb
        payload = decoded["proposal"]["payload"]
        spec = cc_pb2.ChaincodeInvocationSpec.FromString(payload.input)
        name = spec.chaincode_spec.chaincode_id.name
    except Exception:  # no proposal (e.g. a bare test message): no check
        return None
    return str(name) or None


def transaction_time(stub: ChaincodeStub) -> int | None:
    """The proposal's timestamp in unix seconds (its channel header), or None without one.

    Chosen by the submitting client and identical on every endorser: the ledger time of
    committee epochs and flow limits (ADRs 0008, 0010; each endorser bounds its skew, see
    protocol.MAX_TX_SKEW).
    """
    stamp = stub.get_tx_timestamp()
    if stamp is None:
        return None
    seconds = int(getattr(stamp, "seconds", 0))
    return seconds if seconds > 0 else None


class KstbChaincode(Chaincode):
    """The bridge chaincode. ``init`` (an ``--isInit`` call) and ``invoke`` dispatch alike."""

    @staticmethod
    async def init(stub: ChaincodeStub) -> pr_pb2.Response:
        """Same as :meth:`invoke`: the function name decides (``Init`` configures)."""
        return await KstbChaincode.invoke(stub)

    @staticmethod
    async def invoke(stub: ChaincodeStub) -> pr_pb2.Response:
        """Run one call of the protocol; see the module docstring."""
        try:
            function, params = stub.get_function_and_parameters()
        except Exception as exc:  # no args, or arguments that are not UTF-8
            return error(f"InvalidArgument: {exc}")
        events: list[tuple[str, bytes]] = []
        try:
            ctx = Context(
                caller=caller_identity(stub),
                channel_id=str(stub.get_channel_id() or ""),
                chaincode_name=invoked_chaincode_name(stub),
                caller_roles=caller_roles(stub),
                init_pin=init_pin(),
                tx_time=transaction_time(stub),
                local_time=int(time.time()),
            )
            loop = asyncio.get_running_loop()
            run = functools.partial(
                execute,
                _StubStore(stub, loop),
                ctx,
                function,
                list(params),
                lambda name, payload: events.append((name, payload)),
            )
            result = await loop.run_in_executor(None, run)
        except ChaincodeError as exc:
            LOG.info("%s %s refused: %s", stub.get_txid(), function, exc)
            return error(exc.response_message())
        except Exception as exc:
            LOG.exception("%s %s failed", stub.get_txid(), function)
            fault = ChaincodeError("Internal", f"{type(exc).__name__}: {exc}")
            return error(fault.response_message())
        for name, payload in events:
            stub.set_event(name, payload)
        LOG.info("%s %s ok", stub.get_txid(), function)
        return success(result)


class _SerializedWriter:
    """The servicer context with one ``write`` at a time (grpc.aio's rule for a stream)."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self._lock = asyncio.Lock()

    async def write(self, message: Any) -> None:
        async with self._lock:
            await self._context.write(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class KstbHandler(Handler):  # type: ignore[misc]
    """The shim's Handler with the fixes listed in the module docstring."""

    async def chat_with_peer(self, stream: Any, context: Any) -> Any:
        """The shim's loop (register, then handle every message the peer sends), over a
        context whose writes are serialized, without two costs per message that the
        benchmark's chaincode profile showed (issue 14: a third of a saturated server's
        CPU was per-message overhead): the shim formats every message's proposal and
        payload into log strings that are never written, and handles each message in a
        task of its own. A reply to a state call (RESPONSE or ERROR) is handed to its
        waiting call here, in the loop; TRANSACTION and INIT still run in tasks of their
        own, so many proposals are served at once and the loop keeps reading the replies
        they wait for."""
        self.state = STATES.CREATED
        self.context = _SerializedWriter(context)
        self.msg_queue_handler = MsgQueueHandler(self)
        register = shim_pb2.ChaincodeMessage(
            type=shim_pb2.ChaincodeMessage.REGISTER, payload=self.chaincode_id.SerializeToString()
        )
        register.timestamp.GetCurrentTime()
        await self.context.write(register)
        replies = (shim_pb2.ChaincodeMessage.RESPONSE, shim_pb2.ChaincodeMessage.ERROR)
        async for message in stream:
            if message is None:
                LOG.error("received nil message, ending chaincode stream")
                return shim_pb2.ChaincodeMessage(
                    type=shim_pb2.ChaincodeMessage.ERROR,
                    payload=b"received nil message, ending chaincode stream",
                )
            if self.state == STATES.READY and message.type in replies:
                # Resolves the waiting state call; with one call in flight per transaction
                # (the protocol's worker is synchronous) nothing else is queued to send. A
                # reply that cannot be delivered ends only its own call, never the stream.
                try:
                    await self.msg_queue_handler.handle_msg_response(message)
                except Exception:
                    LOG.exception("[%s] reply to a state call not delivered", message.txid)
            else:
                self._track_task(self.handle_message(message))
        if self._pending_tasks:
            await asyncio.gather(*self._pending_tasks, return_exceptions=True)
        return None

    async def get_state_checked(self, key: str, channel_id: str, tx_id: str) -> bytes:
        """GetState that raises on an ERROR reply instead of returning the error text."""
        request = shim_pb2.GetState(key=key, collection="")
        msg = shim_pb2.ChaincodeMessage(
            type=shim_pb2.ChaincodeMessage.GET_STATE,
            payload=request.SerializeToString(),
            txid=tx_id,
            channel_id=channel_id,
        )
        reply = await self._Handler__ask_peer_and_listen(msg, "GetState")
        if reply.type != shim_pb2.ChaincodeMessage.RESPONSE:
            raise RuntimeError(f"GetState {key}: {bytes(reply.payload).decode(errors='replace')}")
        return bytes(reply.payload)

    async def handle_stub_interaction(self, msg: Any, action: str = "Invoke") -> None:
        """Call the chaincode; always answer COMPLETED, with the event on success."""
        stub: ChaincodeStub | None = None
        try:
            cc_input = cc_pb2.ChaincodeInput()
            cc_input.ParseFromString(msg.payload)
            stub = ChaincodeStub(self, msg.channel_id, msg.txid, cc_input, msg.proposal)
            if (action or "").lower() == "init":
                resp = await self.chaincode.init(stub)
            else:
                resp = await self.chaincode.invoke(stub)
            if not resp or not resp.status:
                resp = pr_pb2.Response(status=ResponseCode.ERROR, message="Internal: no response")
        except Exception as exc:
            LOG.exception("[%s] chaincode call failed", msg.txid)
            resp = pr_pb2.Response(status=ResponseCode.ERROR, message=f"Internal: {exc}")
        completed = shim_pb2.ChaincodeMessage(
            type=shim_pb2.ChaincodeMessage.COMPLETED,
            payload=resp.SerializeToString(),
            txid=msg.txid,
            channel_id=msg.channel_id,
        )
        if resp.status < ResponseCode.ERRORTHRESHOLD and stub is not None:
            events = stub.get_events()
            if events:  # Fabric carries one event per transaction; the protocol emits <= 1
                completed.chaincode_event.CopyFrom(events[-1])
        await self.context.write(completed)


class KstbService(shim_grpc.ChaincodeServicer):  # type: ignore[misc]
    """The CCaaS gRPC service: the peer dials in and chats over ``Connect``."""

    def __init__(self, chaincode_id: str, chaincode: Chaincode) -> None:
        self._ccid = chaincode_id
        self._cc = chaincode

    async def Connect(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        """One peer connection: register, then serve its messages until it hangs up."""
        try:
            await KstbHandler(self._ccid, self._cc).chat_with_peer(request_iterator, context)
        except asyncio.CancelledError:
            LOG.info("peer connection cancelled")


async def serve(
    address: str,
    chaincode_id: str,
    tls_key: bytes | None = None,
    tls_cert: bytes | None = None,
    client_ca: bytes | None = None,
) -> None:
    """Serve the chaincode at ``address`` (``host:port``) until cancelled or SIGTERM.

    Without ``tls_key``/``tls_cert`` the server is plaintext; with ``client_ca`` it also
    requires the peer's client cert. SECURITY: ``python -m kstb_chaincode`` calls this only
    with all three unless its development flag is set (``__main__.tls_material``).
    """
    server = grpc.aio.server()
    if tls_key and tls_cert:
        creds = grpc.ssl_server_credentials(
            [(tls_key, tls_cert)], client_ca, require_client_auth=client_ca is not None
        )
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    shim_grpc.add_ChaincodeServicer_to_server(KstbService(chaincode_id, KstbChaincode()), server)
    await server.start()
    LOG.warning("kstb chaincode %s serving on %s (port %d)", chaincode_id, address, port)
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(3)
