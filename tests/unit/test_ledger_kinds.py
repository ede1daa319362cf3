"""The ledger-kind registry (ADR 0014): lazy loading, owned config tables, refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bridge.config import LedgerConfig, load_network, load_verifier
from bridge.domain.errors import InvalidInput
from bridge.domain.ids import LedgerId
from bridge.ledgers.kinds import REGISTRY, LedgerKind, get_kind, kind_names
from tests.unit.test_config import fabric_ledger, network_data, write

pytestmark = [pytest.mark.unit, pytest.mark.conformance]


def test_every_registered_kind_is_a_ledger_kind_named_as_registered() -> None:
    assert set(REGISTRY) <= set(kind_names())
    for name in REGISTRY:
        kind = get_kind(name)
        assert isinstance(kind, LedgerKind)
        assert kind.name == name
        assert get_kind(name) is kind  # loaded once


def test_an_unknown_kind_is_refused_with_the_known_ones() -> None:
    with pytest.raises(
        InvalidInput, match=r"unsupported ledger kind 'corda' \(known: \['evm', 'fabric'"
    ):
        get_kind("corda")


def test_hashing_words_and_parsing_addresses_import_no_ledger_client() -> None:
    """SECURITY/weight: a coordinator that only hashes a word or parses an address must not
    import web3 or the Fabric Gateway client (they load in ``open``)."""
    code = """
import sys
from bridge.config import LedgerConfig
from bridge.domain.ids import LedgerId
from bridge.ledgers.factory import bridge_word_of
from bridge.ledgers.addresses import codec_for
evm = LedgerConfig(LedgerId("a"), "evm", "http://x", "0x" + "11" * 20, 1, 0, 1.0)
fab = LedgerConfig(LedgerId("f"), "fabric", "x:1", "kstb", 0, 0, 1.0, channel="bridge",
                   genesis_hash=b"\\x01" * 32)
for c in (evm, fab):
    bridge_word_of(c); c.network_word
codec_for("evm").parse("0x" + "22" * 20); codec_for("fabric").parse("0x" + "22" * 20)
heavy = [m for m in ("web3", "grpc", "bridge.ledgers.fabric.gateway",
                     "bridge.ledgers.evm.adapter", "bridge.ledgers.fabric.adapter")
         if m in sys.modules]
print(",".join(heavy))
"""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


@pytest.mark.security
@pytest.mark.parametrize(
    ("ledger", "key", "match"),
    [
        (0, "chain_idd", r"ledgers\.brokerage-a\.chain_idd: unknown key \(did you mean 'chain_id'"),
        (0, "channel", r"ledgers\.brokerage-a\.channel: unknown key"),
        (2, "max_gas_price_gwei", r"ledgers\.brokerage-f\.max_gas_price_gwei: unknown key"),
    ],
)
def test_unknown_keys_of_a_ledger_table_are_refused_with_their_path(
    tmp_path: Path, ledger: int, key: str, match: str
) -> None:
    data = network_data()
    data["ledgers"].append(fabric_ledger())
    data["ledgers"][ledger][key] = "x"
    with pytest.raises(InvalidInput, match=match):
        load_network(write(tmp_path / "n.toml", data))


def test_kind_tables_are_kept_on_the_config(tmp_path: Path) -> None:
    data = network_data()
    data["ledgers"].append(fabric_ledger())
    net = load_network(write(tmp_path / "n.toml", data))
    fab = net.ledger("brokerage-f")
    assert fab.settings is not None and fab.settings.channel == "bridge"
    assert fab.tls_ca == tmp_path / "fabric/tlsca.pem"
    assert net.ledger("brokerage-a").settings.chain_id == 31337


def test_read_identities_are_parsed_by_the_ledgers_kind(tmp_path: Path) -> None:
    data = network_data()
    data["ledgers"].append(fabric_ledger())
    write(tmp_path / "network.toml", data)
    ident = {"msp_id": "Org1MSP", "cert_file": "c.pem", "key_file": "k.pem"}
    base = {"network": "network.toml", "listen": "127.0.0.1:3", "vote_db": "v.db"}
    base["key_file"] = "m.key"
    write(tmp_path / "verifier.toml", {**base, "identities": {"brokerage-f": ident}})
    cfg = load_verifier(tmp_path / "verifier.toml")
    assert cfg.identities["brokerage-f"].cert_file == tmp_path / "c.pem"
    # an EVM ledger takes no read identity; an unknown ledger is a mistake, not ignored
    write(tmp_path / "verifier.toml", {**base, "identities": {"brokerage-a": ident}})
    with pytest.raises(InvalidInput, match=r"identities\.brokerage-a: an EVM ledger takes no"):
        load_verifier(tmp_path / "verifier.toml")
    write(tmp_path / "verifier.toml", {**base, "identities": {"nowhere": ident}})
    with pytest.raises(InvalidInput, match=r"identities\.nowhere: unknown ledger"):
        load_verifier(tmp_path / "verifier.toml")


def test_endpoint_and_auth_rules_come_from_the_kind() -> None:
    from bridge.config import LedgerAuth, LedgerEndpoint

    evm = LedgerConfig(LedgerId("a"), "evm", "http://x", "0x" + "11" * 20, 1, 0, 1.0)
    with pytest.raises(InvalidInput, match="tls_ca needs an https:// url"):
        LedgerEndpoint("http://y", tls_ca=Path("ca.pem")).apply(evm)
    with pytest.raises(InvalidInput, match="token_file needs an https:// rpc_url"):
        get_kind("evm").check_auth(evm, LedgerAuth(token_file=Path("t")), "ledger_auth")
    fab = LedgerConfig(LedgerId("f"), "fabric", "x:1", "kstb", 0, 0, 1.0, channel="c")
    with pytest.raises(InvalidInput, match="token_file applies to EVM ledgers only"):
        get_kind("fabric").check_auth(fab, LedgerAuth(token_file=Path("t")), "ledger_auth")


def test_holder_direct_locks_is_the_kinds_and_false_when_a_kind_is_silent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SECURITY: a kind that does not declare holder-direct locks never gets them."""
    from bridge.ledgers import kinds

    assert kinds.holder_direct_locks("evm") is True
    assert kinds.holder_direct_locks("fabric") is False

    class Silent:
        name = "silent"

    monkeypatch.setitem(kinds._LOADED, "silent", Silent())  # type: ignore[arg-type]
    assert kinds.holder_direct_locks("silent") is False
