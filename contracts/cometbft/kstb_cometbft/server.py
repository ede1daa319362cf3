"""CometBFT's ``ABCIService`` (gRPC, ABCI 2.0) over :class:`kstb_cometbft.app.App`.

Protobuf types stop here: the servicer converts each request to plain values, calls the
app under one lock (CometBFT's consensus, mempool and info connections share one state),
and converts back. Queries, when the app has a read-only ``reader`` connection, take only a
lock of their own: a flood of queries through the node's (unauthenticated) RPC cannot delay
FinalizeBlock or Commit.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent / "_proto"))

from cometbft.abci.v1 import service_pb2_grpc as svc
from cometbft.abci.v1 import types_pb2 as abci

from kstb_cometbft import APP_VERSION, VERSION
from kstb_cometbft.app import CODESPACE, EVENT_TYPE, App, TxResult


def _exec_result(r: TxResult) -> Any:
    events = [
        abci.Event(
            type=EVENT_TYPE,
            attributes=[
                abci.EventAttribute(key="name", value=name, index=True),
                abci.EventAttribute(key="payload", value=payload, index=False),
            ],
        )
        for name, payload in r.events
    ]
    return abci.ExecTxResult(
        code=r.code, data=r.data, log=r.log, events=events, codespace=CODESPACE if r.code else ""
    )


class AbciServicer(svc.ABCIServiceServicer):  # type: ignore[misc]
    """Every ABCI call, serialised on one lock."""

    def __init__(self, app: App) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._query_lock = threading.Lock() if app.reader is not None else self._lock

    def Echo(self, request: Any, context: Any) -> Any:
        return abci.EchoResponse(message=request.message)

    def Flush(self, request: Any, context: Any) -> Any:
        return abci.FlushResponse()

    def Info(self, request: Any, context: Any) -> Any:
        with self._lock:
            last = self._app.info()
        return abci.InfoResponse(
            data="kstb",
            version=VERSION,
            app_version=APP_VERSION,
            last_block_height=last.height,
            last_block_app_hash=last.app_hash,
        )

    def InitChain(self, request: Any, context: Any) -> Any:
        with self._lock:
            app_hash = self._app.init_chain(
                request.chain_id, bytes(request.app_state_bytes), int(request.time.seconds)
            )
        return abci.InitChainResponse(app_hash=app_hash)

    def CheckTx(self, request: Any, context: Any) -> Any:
        with self._lock:
            r = self._app.check_tx(bytes(request.tx))
        return abci.CheckTxResponse(code=r.code, log=r.log, codespace=CODESPACE if r.code else "")

    def PrepareProposal(self, request: Any, context: Any) -> Any:
        with self._lock:  # mempool order, only what a validator accepts, within the budget
            txs = self._app.prepare_proposal(
                [bytes(t) for t in request.txs], int(request.max_tx_bytes)
            )
        return abci.PrepareProposalResponse(txs=txs)

    def ProcessProposal(self, request: Any, context: Any) -> Any:
        with self._lock:
            ok = self._app.proposal_ok([bytes(t) for t in request.txs])
        status = abci.PROCESS_PROPOSAL_STATUS_ACCEPT if ok else abci.PROCESS_PROPOSAL_STATUS_REJECT
        return abci.ProcessProposalResponse(status=status)

    def ExtendVote(self, request: Any, context: Any) -> Any:
        return abci.ExtendVoteResponse()

    def VerifyVoteExtension(self, request: Any, context: Any) -> Any:
        return abci.VerifyVoteExtensionResponse(status=abci.VERIFY_VOTE_EXTENSION_STATUS_ACCEPT)

    def FinalizeBlock(self, request: Any, context: Any) -> Any:
        with self._lock:
            results, app_hash = self._app.finalize_block(
                int(request.height), int(request.time.seconds), [bytes(t) for t in request.txs]
            )
        return abci.FinalizeBlockResponse(
            tx_results=[_exec_result(r) for r in results], app_hash=app_hash
        )

    def Commit(self, request: Any, context: Any) -> Any:
        with self._lock:
            self._app.commit()
        return abci.CommitResponse(retain_height=0)

    def Query(self, request: Any, context: Any) -> Any:
        with self._query_lock:
            r = self._app.query(request.path, bytes(request.data), int(request.height))
        return abci.QueryResponse(
            code=r.code,
            value=r.value,
            log=r.log,
            height=r.height,
            codespace=CODESPACE if r.code else "",
        )

    def ListSnapshots(self, request: Any, context: Any) -> Any:
        return abci.ListSnapshotsResponse()

    def OfferSnapshot(self, request: Any, context: Any) -> Any:
        return abci.OfferSnapshotResponse(result=abci.OFFER_SNAPSHOT_RESULT_REJECT)

    def LoadSnapshotChunk(self, request: Any, context: Any) -> Any:
        return abci.LoadSnapshotChunkResponse()

    def ApplySnapshotChunk(self, request: Any, context: Any) -> Any:
        return abci.ApplySnapshotChunkResponse(result=abci.APPLY_SNAPSHOT_CHUNK_RESULT_ABORT)


def serve(app: App, address: str) -> grpc.Server:
    """Start the ABCI gRPC server on ``address`` (``host:port``, loopback: CometBFT runs
    next to it; the ABCI connection is unauthenticated by CometBFT's design)."""
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    svc.add_ABCIServiceServicer_to_server(AbciServicer(app), server)
    server.add_insecure_port(address)
    server.start()
    return server
