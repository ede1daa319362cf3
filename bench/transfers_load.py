"""The transfer benchmark's open-loop load: submit, watch, settle (``bench/transfers.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc
from transfers_metrics import CpuSampler
from transfers_setup import (
    LOAD_MARGIN,
    SUBMIT_TIMEOUT,
    TERMINAL,
    Options,
    TransferResult,
    TransferSpec,
    _say,
)

from bridge.aio import within
from bridge.cli.main import STATE_NAMES
from bridge.devnet.client import AsyncRoutedTransferStub
from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.v1 import transfer_pb2, transfer_pb2_grpc

if TYPE_CHECKING:
    from bridge.v1.transfer_pb2_grpc import TransferServiceAsyncStub


# -- load ------------------------------------------------------------------------------------
def request_for(spec: TransferSpec) -> transfer_pb2.SubmitTransferRequest:
    """The unsigned SubmitTransfer request of ``spec``, under a fresh idempotency key."""
    return transfer_pb2.SubmitTransferRequest(
        idempotency_key=f"bench-{uuid.uuid4()}",
        security_id=DEMO_ISIN,
        source_ledger=spec.source,
        target_ledger=spec.target,
        sender=spec.sender,
        recipient=spec.recipient,
        amount=str(spec.amount),
    )


async def _submit_and_watch(
    stub: TransferServiceAsyncStub, result: TransferResult, deadline: float
) -> None:
    """SubmitTransfer, then follow its WatchTransfer stream to a terminal state."""
    loop = asyncio.get_running_loop()
    start, wall = loop.time(), time.time()
    response = await stub.SubmitTransfer(
        request_for(result.spec), timeout=min(SUBMIT_TIMEOUT, deadline - start)
    )
    result.submit_rpc = loop.time() - start
    result.transfer_id = response.transfer.transfer_id
    watch = stub.WatchTransfer(
        transfer_pb2.WatchTransferRequest(transfer_id=result.transfer_id),
        timeout=max(0.1, deadline - loop.time()),
    )
    async for update in watch:  # the server ends the stream after the terminal update
        name = STATE_NAMES.get(update.state, str(update.state))
        result.state_at[name] = update.at.ToNanoseconds() / 1e9 - wall
        if name in TERMINAL:
            result.end_to_end = loop.time() - start
            result.outcome = "committed" if name == "COMMITTED" else name.lower()
            result.final_state = name
    if not result.final_state:
        result.outcome, result.error = "error", "watch stream ended before a terminal state"


async def run_one(
    stub: TransferServiceAsyncStub, spec: TransferSpec, t0: float, budget: float
) -> TransferResult:
    """Wait for the spec's slot, then run it within ``budget`` seconds; never raises."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, t0 + spec.at - loop.time()))
    result = TransferResult(spec, submit_start=loop.time() - t0)
    deadline = loop.time() + budget
    try:
        async with asyncio.timeout_at(deadline):
            await _submit_and_watch(stub, result, deadline)
    except TimeoutError:
        result.outcome = "timed-out"
    except grpc.aio.AioRpcError as exc:
        timed_out = exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        result.outcome = "timed-out" if timed_out else "error"
        result.error = f"{exc.code().name}: {exc.details()}"
    return result


async def run_load(
    system: LocalSystem, specs: Sequence[TransferSpec], opts: Options, sampler: CpuSampler | None
) -> tuple[list[TransferResult], float]:
    """Offer every spec on schedule (each submitted over mTLS as its source ledger's
    brokerage); returns the results and the load start (monotonic)."""
    stop = asyncio.Event()
    # Each request is instructed by its source ledger's devnet brokerage key (protocol v2).
    stub: Any = AsyncRoutedTransferStub(system, instruct=system.brokerage.instruct)
    try:
        await within(stub.channel("depository").channel_ready(), 10)
        sampling = asyncio.create_task(sampler.run(stop)) if sampler else None
        t0 = asyncio.get_running_loop().time()
        bound = (specs[-1].at if specs else 0.0) + opts.timeout + LOAD_MARGIN
        try:
            async with asyncio.timeout(bound):
                results = await asyncio.gather(*(run_one(stub, s, t0, opts.timeout) for s in specs))
        finally:
            stop.set()
            if sampling is not None:
                await sampling
    finally:
        await stub.close()
    return list(results), t0


async def settle(system: LocalSystem, results: Sequence[TransferResult], limit: float) -> None:
    """Poll transfers that were not seen terminal until they are, for up to ``limit`` s."""
    pending = [r for r in results if r.transfer_id and not r.final_state]
    if not pending:
        return
    _say(f"settling {len(pending)} transfers not seen terminal (up to {limit:g} s) ...")
    loop = asyncio.get_running_loop()
    give_up = loop.time() + limit
    async with system.aio_channel("depository") as channel:
        stub = transfer_pb2_grpc.TransferServiceStub(channel)
        while pending and loop.time() < give_up:
            for r in pending:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    t = await stub.GetTransfer(
                        transfer_pb2.GetTransferRequest(transfer_id=r.transfer_id), timeout=5
                    )
                    if STATE_NAMES.get(t.state) in TERMINAL:
                        r.final_state = STATE_NAMES[t.state]
            pending = [r for r in pending if not r.final_state]
            if pending:
                await asyncio.sleep(1.0)
