"""A trivial key/value chaincode run as a service (CCaaS) with ``fabric-chaincode-python``.

Run by the Fabric integration tests in a separate venv (``.cache/fabric/chaincode-venv``),
because fabric-chaincode-python 2.5.4 needs protobuf < 6 while the project pins protobuf 7:

    CHAINCODE_ID=<package id> CHAINCODE_SERVER_ADDRESS=127.0.0.1:<port> python kv_chaincode.py

Functions: ``put(key, value)`` writes, ``get(key)`` returns the value (error if absent).
"""

from __future__ import annotations

from typing import Any

from fabric_chaincode_python.fabric_shim import server
from fabric_chaincode_python.fabric_shim.interfaces import Chaincode
from fabric_chaincode_python.fabric_shim.response import error, success


class KeyValue(Chaincode):
    """put/get on the world state."""

    @staticmethod
    async def init(stub: Any) -> Any:
        return success(b"")

    @staticmethod
    async def invoke(stub: Any) -> Any:
        fn, args = stub.get_function_and_parameters()
        if fn == "put" and len(args) == 2:
            await stub.put_state(args[0], args[1].encode())
            return success(args[1])
        if fn == "get" and len(args) == 1:
            value = await stub.get_state(args[0])
            if not value:
                return error(f"no value for {args[0]}")
            return success(bytes(value))
        return error(f"unknown call {fn}{args}")


if __name__ == "__main__":
    server.start(KeyValue)
