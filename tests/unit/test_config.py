"""TOML configuration: the network file, daemon files and the minimal TOML writer."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from bridge.config import (
    dump_toml,
    load_coordinator,
    load_network,
    load_relayer,
    load_verifier,
)
from bridge.domain.errors import InvalidInput
from bridge.domain.ids import LedgerId, SecurityId

pytestmark = pytest.mark.unit

MEMBERS = [
    "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
    "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
    "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
]


def network_data(**committee: Any) -> dict[str, Any]:
    return {
        "committee": {"epoch": 2, "threshold": 3, "members": MEMBERS, **committee},
        "securities": {"isins": ["KR7005930003", "US0378331005"]},
        "ledgers": [
            {
                "id": "brokerage-a",
                "kind": "evm",
                "rpc_url": "http://127.0.0.1:8545",
                "bridge": "0x1111111111111111111111111111111111111111",
                "chain_id": 31337,
                "finality_depth": 2,
                "block_interval": 0.5,
            },
            {
                "id": "brokerage-b",
                "kind": "evm",
                "rpc_url": "http://127.0.0.1:8546",
                "bridge": "0x2222222222222222222222222222222222222222",
                "chain_id": 31338,
                "finality_depth": 0,
            },
        ],
    }


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(dump_toml(data))
    return path


# -- load_network --------------------------------------------------------------------------


def test_load_network_happy_path(tmp_path: Path) -> None:
    net = load_network(write(tmp_path / "network.toml", network_data()))
    assert net.committee.epoch == 2
    assert net.committee.threshold == 3
    assert net.committee.members == tuple(bytes.fromhex(m[2:]) for m in MEMBERS)
    assert list(net.ledgers) == ["brokerage-a", "brokerage-b"]
    a = net.ledger("brokerage-a")
    assert a.id == LedgerId("brokerage-a")
    assert (a.kind, a.rpc_url, a.chain_id, a.finality_depth, a.block_interval) == (
        "evm",
        "http://127.0.0.1:8545",
        31337,
        2,
        0.5,
    )
    assert a.bridge == "0x1111111111111111111111111111111111111111"
    b = net.ledger("brokerage-b")
    assert (b.chain_id, b.finality_depth, b.block_interval) == (31338, 0, 1.0)  # defaults
    assert dict(net.securities) == {
        "KR7005930003": SecurityId("KR7005930003"),
        "US0378331005": SecurityId("US0378331005"),
    }
    with pytest.raises(KeyError):
        net.ledger("brokerage-z")


def test_load_network_without_ledgers_or_securities(tmp_path: Path) -> None:
    data = network_data()
    del data["ledgers"], data["securities"]
    net = load_network(write(tmp_path / "n.toml", data))
    assert dict(net.ledgers) == {}
    assert dict(net.securities) == {}


def test_missing_committee(tmp_path: Path) -> None:
    data = network_data()
    del data["committee"]
    path = write(tmp_path / "n.toml", data)
    with pytest.raises(InvalidInput, match="committee: missing required key"):
        load_network(path)


@pytest.mark.parametrize("key", ["epoch", "threshold", "members"])
def test_missing_committee_key(tmp_path: Path, key: str) -> None:
    data = network_data()
    del data["committee"][key]
    with pytest.raises(InvalidInput, match=f"committee.{key}: missing required key"):
        load_network(write(tmp_path / "n.toml", data))


@pytest.mark.parametrize("key", ["kind", "rpc_url", "bridge"])
def test_missing_ledger_key(tmp_path: Path, key: str) -> None:
    data = network_data()
    del data["ledgers"][0][key]
    with pytest.raises(InvalidInput, match=f"ledgers.brokerage-a.{key}: missing required key"):
        load_network(write(tmp_path / "n.toml", data))


def test_missing_ledger_id(tmp_path: Path) -> None:
    data = network_data()
    del data["ledgers"][1]["id"]
    with pytest.raises(InvalidInput, match=r"ledgers\[1\]\.id: missing required key"):
        load_network(write(tmp_path / "n.toml", data))


def test_unknown_ledger_kind(tmp_path: Path) -> None:
    data = network_data()
    data["ledgers"][1]["kind"] = "corda"
    with pytest.raises(InvalidInput, match="unsupported ledger kind 'corda'"):
        load_network(write(tmp_path / "n.toml", data))


def test_duplicate_ledger_id(tmp_path: Path) -> None:
    data = network_data()
    data["ledgers"][1]["id"] = "brokerage-a"
    with pytest.raises(InvalidInput, match="ledger brokerage-a configured twice"):
        load_network(write(tmp_path / "n.toml", data))


def test_invalid_ledger_name(tmp_path: Path) -> None:
    data = network_data()
    data["ledgers"][0]["id"] = "Brokerage_A"
    with pytest.raises(InvalidInput, match="ledger id 'Brokerage_A'"):
        load_network(write(tmp_path / "n.toml", data))


def test_invalid_isin_in_securities(tmp_path: Path) -> None:
    data = network_data()
    data["securities"]["isins"].append("US0378331006")
    with pytest.raises(InvalidInput, match="'US0378331006' is not a valid ISIN"):
        load_network(write(tmp_path / "n.toml", data))


def test_invalid_member_address(tmp_path: Path) -> None:
    data = network_data(members=[*MEMBERS[:3], "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDB"])
    with pytest.raises(InvalidInput, match="invalid EIP-55 checksum"):
        load_network(write(tmp_path / "n.toml", data))


def test_committee_rules_apply(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="threshold must exceed n/2"):
        load_network(write(tmp_path / "n.toml", network_data(threshold=2)))
    with pytest.raises(
        InvalidInput, match=r"committee\.epoch: must be greater than or equal to 1 \(got 0\)"
    ):
        load_network(write(tmp_path / "n.toml", network_data(epoch=0)))


# -- daemon files --------------------------------------------------------------------------


def test_daemon_files_resolve_relative_paths(tmp_path: Path) -> None:
    write(tmp_path / "network.toml", network_data())
    coord = load_coordinator(
        write(
            tmp_path / "coordinator.toml",
            {
                "network": "network.toml",
                "listen": "127.0.0.1:7000",
                "database": "state/coordinator.sqlite",
                "verifiers": ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"],
                "relayers": {"brokerage-a": "127.0.0.1:7201", "brokerage-b": "127.0.0.1:7202"},
            },
        )
    )
    assert coord.database == tmp_path / "state" / "coordinator.sqlite"
    assert coord.verifiers == ("127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103")
    assert dict(coord.relayers) == {
        "brokerage-a": "127.0.0.1:7201",
        "brokerage-b": "127.0.0.1:7202",
    }
    assert (coord.transfer_ttl, coord.rpc_timeout) == (300, 30.0)

    relayer = load_relayer(
        write(
            tmp_path / "relayer.toml",
            {
                "network": str(tmp_path / "network.toml"),  # absolute stays absolute
                "ledger": "brokerage-b",
                "listen": "127.0.0.1:7202",
                "coordinator": "127.0.0.1:7000",
                "key_file": "keys/relayer.key",
                "state_db": "/var/lib/relayer.sqlite",
            },
        )
    )
    assert relayer.key_file == tmp_path / "keys" / "relayer.key"
    assert relayer.state_db == Path("/var/lib/relayer.sqlite")
    assert relayer.poll_interval == 0.2

    verifier = load_verifier(
        write(
            tmp_path / "verifier.toml",
            {
                "network": "network.toml",
                "listen": "127.0.0.1:7101",
                "key_file": "keys/v0.key",
                "vote_db": "state/v0.sqlite",
            },
        )
    )
    assert verifier.vote_db == tmp_path / "state" / "v0.sqlite"
    assert dict(verifier.rpc_overrides) == {}


def test_relayer_for_unknown_ledger(tmp_path: Path) -> None:
    write(tmp_path / "network.toml", network_data())
    path = write(
        tmp_path / "relayer.toml",
        {
            "network": "network.toml",
            "ledger": "brokerage-z",
            "listen": "127.0.0.1:1",
            "coordinator": "127.0.0.1:2",
            "key_file": "k",
            "state_db": "s",
        },
    )
    with pytest.raises(InvalidInput, match="relayer for unknown ledger 'brokerage-z'"):
        load_relayer(path)


def test_coordinator_relayer_for_unknown_ledger(tmp_path: Path) -> None:
    write(tmp_path / "network.toml", network_data())
    path = write(
        tmp_path / "c.toml",
        {
            "network": "network.toml",
            "listen": "127.0.0.1:1",
            "database": "d",
            "verifiers": [],
            "relayers": {"brokerage-z": "127.0.0.1:1"},
        },
    )
    with pytest.raises(InvalidInput, match="relayer for unknown ledger 'brokerage-z'"):
        load_coordinator(path)


def test_coordinator_needs_a_relayer_for_every_ledger(tmp_path: Path) -> None:
    write(tmp_path / "network.toml", network_data())
    path = write(
        tmp_path / "c.toml",
        {
            "network": "network.toml",
            "listen": "127.0.0.1:1",
            "database": "d",
            "verifiers": [],
            "relayers": {"brokerage-a": "127.0.0.1:1"},
        },
    )
    with pytest.raises(InvalidInput, match="no relayer configured for ledger 'brokerage-b'"):
        load_coordinator(path)


@pytest.mark.parametrize("chain_id", [None, 0, -1])
def test_evm_ledger_needs_a_chain_id(tmp_path: Path, chain_id: int | None) -> None:
    data = network_data()
    if chain_id is None:
        del data["ledgers"][1]["chain_id"]
    else:
        data["ledgers"][1]["chain_id"] = chain_id
    with pytest.raises(
        InvalidInput,
        match=r"ledgers\.brokerage-b\.chain_id: (missing required key|must be greater than 0)",
    ):
        load_network(write(tmp_path / "network.toml", data))


# -- dump_toml -----------------------------------------------------------------------------


def test_dump_toml_round_trips_network_shape() -> None:
    data = network_data()
    assert tomllib.loads(dump_toml(data)) == data


def test_dump_toml_round_trips_scalars_and_nested_table() -> None:
    data: dict[str, Any] = {
        "name": 'quote " and back\\slash',
        "flag": True,
        "off": False,
        "count": 7,
        "ratio": 0.25,
        "big": 2**62,
        "empty": [],
        "mixed": [1, 2, 3],
        "path": Path("/tmp/x y/state.sqlite"),
        "relayers": {"brokerage-a": "127.0.0.1:1", "brokerage-b": "127.0.0.1:2"},
    }
    parsed = tomllib.loads(dump_toml(data))
    assert parsed == {**data, "path": "/tmp/x y/state.sqlite"}


def test_dump_toml_writes_simple_keys_before_tables() -> None:
    text = dump_toml({"table": {"k": 1}, "top": "v"})
    assert text.index('top = "v"') < text.index("[table]")
    assert tomllib.loads(text) == {"table": {"k": 1}, "top": "v"}


def test_dump_toml_refuses_unsupported_values() -> None:
    with pytest.raises(TypeError, match="cannot write NoneType to TOML"):
        dump_toml({"x": None})


def test_dump_toml_escapes_control_characters() -> None:
    data = {"note": "line one\nline two"}
    assert tomllib.loads(dump_toml(data)) == data


def fabric_ledger(**extra: Any) -> dict[str, Any]:
    return {
        "id": "brokerage-f",
        "kind": "fabric",
        "rpc_url": "127.0.0.1:7051",
        "bridge": "kstb",
        "channel": "bridge",
        "tls_ca": "fabric/tlsca.pem",
        "tls_server_name": "peer0.org1.example.com",
        "genesis_hash": "0x" + "ab" * 32,
        **extra,
    }


def test_fabric_ledger_settings(tmp_path: Path) -> None:
    data = network_data()
    data["ledgers"].append(fabric_ledger())
    net = load_network(write(tmp_path / "network.toml", data))
    f = net.ledger("brokerage-f")
    assert (f.kind, f.rpc_url, f.bridge, f.channel) == (
        "fabric",
        "127.0.0.1:7051",
        "kstb",
        "bridge",
    )
    assert f.tls_ca == tmp_path / "fabric" / "tlsca.pem"
    assert f.tls_server_name == "peer0.org1.example.com"
    assert f.chain_id == 0


@pytest.mark.parametrize("missing", ["channel", "tls_ca"])
def test_fabric_ledger_needs_channel_and_tls(tmp_path: Path, missing: str) -> None:
    data = network_data()
    ledger = fabric_ledger()
    del ledger[missing]
    data["ledgers"].append(ledger)
    with pytest.raises(
        InvalidInput,
        match=r"ledgers\.brokerage-f\.(channel|tls_ca): missing required key",
    ):
        load_network(write(tmp_path / "network.toml", data))


def test_verifier_fabric_identities_and_relayer_certificate(tmp_path: Path) -> None:
    data = network_data()
    data["ledgers"].append(fabric_ledger())
    write(tmp_path / "network.toml", data)
    verifier = load_verifier(
        write(
            tmp_path / "verifier.toml",
            {
                "network": "network.toml",
                "listen": "127.0.0.1:7101",
                "key_file": "keys/v0.key",
                "vote_db": "state/v0.sqlite",
                "fabric_identities": {
                    "brokerage-f": {
                        "msp_id": "Org1MSP",
                        "cert_file": "f/c.pem",
                        "key_file": "f/k.pem",
                    }
                },
            },
        )
    )
    ident = verifier.identities["brokerage-f"]
    assert (ident.msp_id, ident.cert_file, ident.key_file) == (
        "Org1MSP",
        tmp_path / "f" / "c.pem",
        tmp_path / "f" / "k.pem",
    )
    relayer = load_relayer(
        write(
            tmp_path / "relayer.toml",
            {
                "network": "network.toml",
                "ledger": "brokerage-f",
                "listen": "127.0.0.1:7202",
                "coordinator": "127.0.0.1:7000",
                "key_file": "f/k.pem",
                "cert_file": "f/c.pem",
                "msp_id": "Org1MSP",
                "state_db": "r.sqlite",
            },
        )
    )
    assert relayer.credentials.cert_file == tmp_path / "f" / "c.pem"
    assert relayer.credentials.msp_id == "Org1MSP"


def _verifier_with(tmp_path: Path, overrides: dict[str, Any]) -> Any:
    data = network_data()
    data["ledgers"].append(fabric_ledger())
    write(tmp_path / "network.toml", data)
    return load_verifier(
        write(
            tmp_path / "verifier.toml",
            {
                "network": "network.toml",
                "listen": "127.0.0.1:7101",
                "key_file": "keys/v0.key",
                "vote_db": "state/v0.sqlite",
                "rpc_overrides": overrides,
            },
        )
    )


def test_verifier_reads_through_its_own_nodes(tmp_path: Path) -> None:
    verifier = _verifier_with(
        tmp_path,
        {
            "brokerage-a": "http://10.0.0.9:8545",
            "brokerage-f": {
                "url": "127.0.0.1:9051",
                "tls_ca": "org2/tlsca.pem",
                "tls_server_name": "peer0.org2.example.com",
            },
        },
    )
    net = verifier.network
    evm = verifier.rpc_overrides["brokerage-a"].apply(net.ledger("brokerage-a"))
    assert evm.rpc_url == "http://10.0.0.9:8545"
    assert evm.bridge == net.ledger("brokerage-a").bridge
    fab = verifier.rpc_overrides["brokerage-f"].apply(net.ledger("brokerage-f"))
    assert (fab.rpc_url, fab.tls_ca, fab.tls_server_name) == (
        "127.0.0.1:9051",
        tmp_path / "org2" / "tlsca.pem",
        "peer0.org2.example.com",
    )
    assert (fab.channel, fab.bridge) == ("bridge", "kstb")
    # Only the address: the network file's TLS settings stay.
    same_org = _verifier_with(tmp_path, {"brokerage-f": "127.0.0.1:7052"})
    kept = same_org.rpc_overrides["brokerage-f"].apply(net.ledger("brokerage-f"))
    assert (kept.rpc_url, kept.tls_ca, kept.tls_server_name) == (
        "127.0.0.1:7052",
        tmp_path / "fabric" / "tlsca.pem",
        "peer0.org1.example.com",
    )


@pytest.mark.parametrize(
    ("ledger", "override", "message"),
    [
        (
            "brokerage-f",
            {"url": "h:1", "tls_cafile": "x"},
            r"rpc_overrides\.brokerage-f\.tls_cafile: unknown key \(did you mean 'tls_ca'\?\)",
        ),
        ("brokerage-f", {"tls_ca": "x"}, r"rpc_overrides\.brokerage-f\.url: missing required key"),
        ("brokerage-f", 7051, "rpc_overrides.brokerage-f: must be a string"),
        ("brokerage-a", {"url": "http://h", "tls_ca": "x"}, "tls_ca needs an https:// url"),
        (
            "brokerage-a",
            {"url": "https://h", "tls_ca": "x", "tls_server_name": "n"},
            "tls_server_name applies to Fabric only",
        ),
        ("brokerage-f", {"url": "h:1", "tls_server_name": "p"}, "tls_server_name needs tls_ca"),
        ("brokerage-a", "", "rpc_overrides.brokerage-a: must have at least 1 character"),
        ("brokerage-f", {"url": ""}, "rpc_overrides.brokerage-f.url: must have at least 1"),
    ],
)
def test_verifier_endpoint_mistakes_are_refused(
    tmp_path: Path, ledger: str, override: Any, message: str
) -> None:
    def load_and_apply() -> None:
        verifier = _verifier_with(tmp_path, {ledger: override})
        verifier.rpc_overrides[ledger].apply(verifier.network.ledger(ledger))

    with pytest.raises(InvalidInput, match=message):
        load_and_apply()


# -- protocol v2: network words and instruction keys -----------------------------------------


@pytest.mark.security
def test_network_words_and_instruction_keys(tmp_path: Path) -> None:
    data = network_data()
    data["ledgers"].append(fabric_ledger())
    names = [lg["id"] for lg in data["ledgers"]]
    key = "0x" + "0b" * 20
    data["instruction_keys"] = {names[0]: [key]}
    net = load_network(write(tmp_path / "network.toml", data))
    evm = net.ledgers[names[0]]
    assert evm.network_word == evm.chain_id.to_bytes(32, "big")
    assert net.ledgers["brokerage-f"].network_word == bytes([0xAB]) * 32
    assert net.may_instruct(names[0], bytes([0x0B]) * 20)
    assert not net.may_instruct(names[0], bytes([0x0C]) * 20)
    assert not net.may_instruct("brokerage-f", bytes([0x0B]) * 20)


@pytest.mark.security
@pytest.mark.parametrize(
    ("ledger_extra", "keys", "match"),
    [
        ({"genesis_hash": None}, {}, "genesis_hash: missing required key"),
        ({"genesis_hash": "0x1234"}, {}, "genesis_hash: must match pattern"),
        ({"genesis_hash": "0x" + "zz" * 32}, {}, "genesis_hash: must match pattern"),
        ({}, {"nowhere": ["0x" + "0b" * 20]}, "instruction_keys.nowhere: unknown ledger"),
        ({}, {"brokerage-f": "0x" + "0b" * 20}, "instruction_keys.brokerage-f: must be an array"),
        ({}, {"brokerage-f": ["0x" + "00" * 20]}, "the zero address is not a key"),
        ({}, {"brokerage-f": ["0x1234"]}, r"instruction_keys\.brokerage-f\[0\]: must match"),
    ],
)
def test_bad_network_words_and_instruction_keys_are_refused(
    tmp_path: Path, ledger_extra: dict[str, Any], keys: dict[str, Any], match: str
) -> None:
    data = network_data()
    ledger = fabric_ledger(**ledger_extra)
    if ledger.get("genesis_hash") is None:
        del ledger["genesis_hash"]
    data["ledgers"].append(ledger)
    if keys:
        data["instruction_keys"] = keys
    with pytest.raises(InvalidInput, match=match):
        load_network(write(tmp_path / "network.toml", data))


def test_genesis_hash_on_an_evm_ledger_is_refused(tmp_path: Path) -> None:
    data = network_data()
    data["ledgers"][0]["genesis_hash"] = "0x" + "ab" * 32
    with pytest.raises(InvalidInput, match=r"ledgers\.brokerage-a\.genesis_hash: unknown key"):
        load_network(write(tmp_path / "network.toml", data))
