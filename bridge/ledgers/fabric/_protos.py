"""The Fabric protobuf modules, typed as ``Any`` for mypy.

They are generated into :mod:`bridge.ledgers.fabric.pb` from the vendored fabric-protos
sources (``python -m bridge.tools.gen_fabric_proto``, ADR 0021), so the bridge needs no Fabric
wheel at run time. protobuf builds their message classes at import time, so mypy sees none of
them (every use would be an ``attr-defined`` error). Importing the modules through
:func:`importlib.import_module` gives them the type ``Any`` in one place; the rest of the
package stays strictly typed. The ``*_grpc`` stub modules are untyped generated code and are
loaded the same way.
"""

from __future__ import annotations

import importlib
from typing import Any


def _load(name: str) -> Any:
    return importlib.import_module(f"bridge.ledgers.fabric.pb.{name}")


gateway_pb2: Any = _load("gateway.gateway_pb2")
gateway_pb2_grpc: Any = _load("gateway.gateway_pb2_grpc")
events_pb2_grpc: Any = _load("peer.events_pb2_grpc")
proposal_pb2: Any = _load("peer.proposal_pb2")
proposal_response_pb2: Any = _load("peer.proposal_response_pb2")
chaincode_pb2: Any = _load("peer.chaincode_pb2")
chaincode_event_pb2: Any = _load("peer.chaincode_event_pb2")
transaction_pb2: Any = _load("peer.transaction_pb2")
events_pb2: Any = _load("peer.events_pb2")
common_pb2: Any = _load("common.common_pb2")
ledger_pb2: Any = _load("common.ledger_pb2")
identities_pb2: Any = _load("msp.identities_pb2")
ab_pb2: Any = _load("orderer.ab_pb2")
rwset_pb2: Any = _load("ledger.rwset.rwset_pb2")
kv_rwset_pb2: Any = _load("ledger.rwset.kvrwset.kv_rwset_pb2")
