"""gRPC C-core's own stderr lines come out as JSON like every other line of a daemon.

A real child process (the daemons' ``route_native_stderr`` then ``configure``) makes gRPC's
core library log a TLS handshake failure to descriptor 2 by itself, and writes a line to
descriptor 2 below Python; every line the child writes must be one JSON object.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from bridge.obs.native_stderr import NATIVE_SOURCE, native_level

pytestmark = [pytest.mark.ops]

CHILD = textwrap.dedent(
    """
    import asyncio, os, time
    import grpc
    from bridge.logfields import configure
    from bridge.obs.native_stderr import route_native_stderr

    assert route_native_stderr("probe")
    assert not route_native_stderr("probe")  # idempotent
    log = configure("probe")
    log.info("python line")

    async def main() -> None:
        server = grpc.aio.server()
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials())
        try:
            await channel.unary_unary("/x.Y/Z")(b"", timeout=5)
        except grpc.aio.AioRpcError as exc:
            log.info("call failed", code=exc.code().name)
        await channel.close()
        await server.stop(None)

    asyncio.run(main())
    os.write(2, b"W0000 00:00:00.000000 1 fake.cc:1] a native warning\\n")
    os.write(2, b"no severity letter here\\n")
    time.sleep(0.5)  # the forwarding thread drains the pipe
    """
)


def test_native_lines_are_json_with_their_level_and_component() -> None:
    """A child process: gRPC's handshake-failure line and raw descriptor-2 writes."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"KSTB_LOG_FORMAT": "json", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    records = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    native = [r for r in records if r.get("source") == NATIVE_SOURCE]
    assert all(r["component"] == "probe" and "level" in r for r in records)
    handshake = [r for r in native if "Handshake failed" in r["line"]]
    assert handshake, records  # gRPC's own line, not one this test wrote
    levels = {r["line"]: r["level"] for r in native}
    assert levels["W0000 00:00:00.000000 1 fake.cc:1] a native warning"] == "warning"
    assert levels["no severity letter here"] == "warning"
    assert any(r["event"] == "python line" for r in records)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("line", "level"),
    [
        ("E1202 17:00:00.1 1 a.cc:1] x", "error"),
        ("W0000 x", "warning"),
        ("I1202 x", "info"),
        ("D1202 x", "debug"),
        ("F1202 x", "critical"),
        ("Error: not a severity", "warning"),
        ("", "warning"),
    ],
)
def test_severity_letters(line: str, level: str) -> None:
    assert native_level(line) == level
