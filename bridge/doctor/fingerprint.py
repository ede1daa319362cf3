"""A fingerprint of what a network file means, to see components running with different ones.

Not a protocol digest (nothing signs or verifies it): a SHA-256 over a canonical JSON of the
file's content as loaded — committee, later members and their endpoints, ledgers (id, kind,
network and bridge words, finality depth), securities, supply operators, instruction keys
and organisations (id, roles, the SHA-256 of the CA certificate's bytes). Host-specific
things (paths, node URLs, TLS server names, the revocation list that changes at run time)
are left out, so the same file deployed on two hosts has the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json

from bridge.config import NetworkConfig
from bridge.ledgers.kinds import get_kind


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def _ca_digest(path: object) -> str:
    try:
        with open(str(path), "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return "unreadable"


def network_fingerprint(network: NetworkConfig) -> bytes:
    """32 bytes; equal for two loads of files with the same meaning (see module docstring)."""
    c = network.committee
    content = {
        "committee": [c.epoch, c.threshold, sorted(_hex(m) for m in c.members)],
        "later": sorted([_hex(m), e] for m, e in network.later_members.items()),
        "ledgers": sorted(
            [
                name,
                lc.kind,
                _hex(get_kind(lc.kind).network_word(lc)),
                _hex(get_kind(lc.kind).bridge_word(lc)),
                lc.finality_depth,
            ]
            for name, lc in network.ledgers.items()
        ),
        "securities": sorted(network.securities),
        "supply_operators": sorted(_hex(a) for a in network.supply_operators),
        "instruction_keys": sorted(
            [ledger, sorted(_hex(k) for k in keys)]
            for ledger, keys in network.instruction_keys.items()
        ),
        "organisations": sorted(
            [o.id, sorted(str(r) for r in o.roles), _ca_digest(o.ca_file)]
            for o in network.organisations.values()
        ),
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(b"kstb-doctor-network-file-v1\x00" + canonical).digest()
