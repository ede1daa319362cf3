"""Strict configuration (issue 12 item 1): the rules between keys and files, environment
overrides, the daemons' refusal at start, the generated reference and the docs' examples."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import structlog

from bridge.config import load_coordinator, load_network, load_relayer, load_verifier
from bridge.config_errors import ConfigError, ConfigProblem
from bridge.config_rules import ENV_REFUSED, known_keys, validate
from bridge.config_schema import FILE_MODELS
from bridge.daemon import EXIT_CONFIG
from bridge.ledgers.kinds import REGISTRY, get_kind, table_problems
from tests.unit.test_config import MEMBERS, fabric_ledger, network_data, write

pytestmark = [pytest.mark.unit, pytest.mark.ops]

ROOT = Path(__file__).resolve().parents[2]
RELAYERS = {"brokerage-a": "127.0.0.1:7201", "brokerage-b": "127.0.0.1:7202"}


def problems(exc: pytest.ExceptionInfo[ConfigError]) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in exc.value.problems]


def network(tmp_path: Path, data: dict[str, Any] | None = None) -> Path:
    return write(tmp_path / "network.toml", network_data() if data is None else data)


def coordinator(tmp_path: Path, **extra: Any) -> Path:
    network(tmp_path)
    body = {
        "network": "network.toml",
        "listen": "127.0.0.1:7000",
        "database": "c.sqlite",
        "verifiers": ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"],
        "relayers": dict(RELAYERS),
    }
    return write(tmp_path / "coordinator.toml", body | extra)


def relayer(tmp_path: Path, data: dict[str, Any] | None = None, **extra: Any) -> Path:
    network(tmp_path, data)
    body = {
        "network": "network.toml",
        "ledger": "brokerage-a",
        "listen": "127.0.0.1:7201",
        "coordinator": "127.0.0.1:7000",
        "key_file": "k",
        "state_db": "r.sqlite",
    }
    return write(tmp_path / "relayer.toml", body | extra)


def verifier(tmp_path: Path, data: dict[str, Any] | None = None, **extra: Any) -> Path:
    network(tmp_path, data)
    body = {
        "network": "network.toml",
        "listen": "127.0.0.1:7101",
        "key_file": "k",
        "vote_db": "v.sqlite",
    }
    return write(tmp_path / "verifier.toml", body | extra)


# ---- the issue's own examples -------------------------------------------------------------


def test_the_issue_typos_are_refused_with_their_path_and_a_suggestion(tmp_path: Path) -> None:
    data = network_data()
    data["ledgers"][0]["finalty_depth"] = 12
    with pytest.raises(ConfigError) as exc:
        load_network(network(tmp_path, data))
    assert (
        "ledgers.brokerage-a.finalty_depth",
        "unknown key (did you mean 'finality_depth'?)",
    ) in problems(exc)
    with pytest.raises(ConfigError) as exc:
        load_coordinator(coordinator(tmp_path, transfer_tll=30))
    assert problems(exc) == [("transfer_tll", "unknown key (did you mean 'transfer_ttl'?)")]


def test_a_3_of_4_committee_with_one_endpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_coordinator(coordinator(tmp_path, verifiers=["127.0.0.1:7101"]))
    assert problems(exc) == [
        (
            "verifiers",
            "quorum unreachable: 1 of the 4 genesis members have an endpoint, 3 must sign",
        )
    ]


def test_every_problem_of_a_pass_is_listed_at_once(tmp_path: Path) -> None:
    path = coordinator(tmp_path, transfer_ttl=0, rpc_timeout=-1.0, listen="nowhere", extra=1)
    with pytest.raises(ConfigError) as exc:
        load_coordinator(path)
    assert [p for p, _ in problems(exc)] == ["listen", "transfer_ttl", "rpc_timeout", "extra"]
    assert exc.value.file == str(path)
    assert str(exc.value).startswith(f"{path}: listen: ")


# ---- network file rules -------------------------------------------------------------------


def _net(**change: Any) -> dict[str, Any]:
    data = network_data()
    for key, value in change.items():
        section, _, name = key.partition("__")
        data[section][name] = value
    return data


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            _net(committee__threshold=5),
            ("committee.threshold", "threshold 5 exceeds the 4 members"),
        ),
        (
            _net(committee__threshold=2),
            ("committee.threshold", "threshold must exceed n/2 (t=2, n=4)"),
        ),
        (
            _net(committee__members=[*MEMBERS[:3], MEMBERS[0].lower()], committee__threshold=3),
            ("committee.members[3]", f"{MEMBERS[0].lower()} is listed twice"),
        ),
        (
            _net(committee__later=[{"member": MEMBERS[1]}]),
            ("committee.later[0].member", f"{MEMBERS[1]} is listed twice"),
        ),
        (
            _net(securities__isins=["US0378331005", "US0378331005"]),
            ("securities.isins[1]", "US0378331005 is listed twice"),
        ),
        (
            _net(securities__isins=["US0378331006"]),
            ("securities.isins[0]", "'US0378331006' is not a valid ISIN"),
        ),
    ],
    ids=["t-above-n", "t-not-majority", "member-twice", "later-twice", "isin-twice", "isin"],
)
def test_committee_and_security_rules(
    tmp_path: Path, data: dict[str, Any], expected: tuple[str, str]
) -> None:
    with pytest.raises(ConfigError) as exc:
        load_network(network(tmp_path, data))
    assert expected in problems(exc)


def test_ledger_rules(tmp_path: Path) -> None:
    data = network_data()
    del data["ledgers"][1]["finality_depth"]
    data["ledgers"][0]["bridge"] = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD"  # bad EIP-55
    data["ledgers"].append(copy.deepcopy(data["ledgers"][0]) | {"bridge": "0x" + "33" * 20})
    data["instruction_keys"] = {"brokerage-c": ["0x" + "0b" * 20]}
    with pytest.raises(ConfigError) as exc:
        load_network(network(tmp_path, data))
    found = dict(problems(exc))
    assert found["ledgers.brokerage-b.finality_depth"].startswith(
        "missing required key (kind evm has probabilistic finality"
    )
    assert "not a valid evm address" in found["ledgers.brokerage-a.bridge"]
    assert "EIP-55" in found["ledgers.brokerage-a.bridge"]
    assert found["ledgers.brokerage-a.id"] == "ledger brokerage-a configured twice"
    assert found["instruction_keys.brokerage-c"].startswith("unknown ledger (did you mean")


def test_checksums_and_ledger_ids_are_refused_at_their_path(tmp_path: Path) -> None:
    bad = MEMBERS[3][:-1] + MEMBERS[3][-1].swapcase()  # one letter's case: a bad EIP-55
    data = network_data(members=[*MEMBERS[:3], bad])
    data["supply"] = {"operators": [bad]}
    data["ledgers"][0]["id"] = "Brokerage_A"
    data["instruction_keys"] = {"brokerage-b": [bad]}
    with pytest.raises(ConfigError) as exc:
        load_network(network(tmp_path, data))
    found = dict(problems(exc))
    for path in ("committee.members[3]", "supply.operators[0]", "instruction_keys.brokerage-b[0]"):
        assert "invalid EIP-55 checksum" in found[path]
    assert "ledger id 'Brokerage_A'" in found["ledgers.Brokerage_A.id"]


def test_a_kind_with_deterministic_finality_needs_no_depth(tmp_path: Path) -> None:
    data = network_data()
    data["ledgers"].append(fabric_ledger())
    assert load_network(network(tmp_path, data)).ledger("brokerage-f").finality_depth == 0


# ---- daemon file rules --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {"relayers": RELAYERS | {"brokerage-c": "127.0.0.1:7203"}},
            ("relayers.brokerage-c", "relayer for unknown ledger 'brokerage-c'"),
        ),
        (
            {"relayers": {"brokerage-a": "127.0.0.1:7201"}},
            ("relayers.brokerage-b", "no relayer configured for ledger 'brokerage-b'"),
        ),
        (
            {"verifiers": ["127.0.0.1:7101", "127.0.0.1:7101", "127.0.0.1:7102"]},
            ("verifiers[1]", "endpoint 127.0.0.1:7101 is listed twice"),
        ),
        (
            {"verifiers": [{"endpoint": "127.0.0.1:7101", "member": "0x" + "77" * 20}]},
            ("verifiers[0].member", f"0x{'77' * 20} is not a committee member"),
        ),
        (
            {
                "verifiers": [
                    {"endpoint": "127.0.0.1:7101", "member": MEMBERS[0]},
                    {"endpoint": "127.0.0.1:7102", "member": MEMBERS[0]},
                ]
            },
            ("verifiers[1].member", f"{MEMBERS[0]} is listed twice"),
        ),
        (
            {
                "verifiers": [
                    {"endpoint": "127.0.0.1:7101", "member": MEMBERS[0]},
                    {"endpoint": "127.0.0.1:7102", "member": MEMBERS[1]},
                ]
            },
            (
                "verifiers",
                "quorum unreachable: 2 of the 4 genesis members have an endpoint, 3 must sign",
            ),
        ),
        (
            {"tls": {"cert_file": "c.pem", "key_file": "k.pem"}},
            ("verifiers[0]", "with [tls], each entry must name its member ({endpoint, member})"),
        ),
        (
            {
                "verifiers": [
                    {"endpoint": "127.0.0.1:7101", "member": MEMBERS[0][:-1] + "D"},
                    "127.0.0.1:7102",
                    "127.0.0.1:7103",
                ]
            },
            ("verifiers[0].member", f"'{MEMBERS[0][:-1]}D' has an invalid EIP-55 checksum"),
        ),
        (
            {"metrics": {"listen": "127.0.0.1:7000"}},
            ("metrics.listen", "127.0.0.1:7000 is also the gRPC listen address"),
        ),
        (
            {"max_batch_items": 500, "max_batch_items_per_day": 499},
            (
                "max_batch_items_per_day",
                "499 is below max_batch_items (500): a full batch could never be submitted",
            ),
        ),
    ],
    ids=[
        "relayer-unknown-ledger",
        "ledger-without-relayer",
        "endpoint-twice",
        "not-a-member",
        "member-twice",
        "quorum",
        "tls-unnamed",
        "member-checksum",
        "metrics-clash",
        "batch-quota-below-a-batch",
    ],
)
def test_coordinator_rules(
    tmp_path: Path, extra: dict[str, Any], expected: tuple[str, str]
) -> None:
    with pytest.raises(ConfigError) as exc:
        load_coordinator(coordinator(tmp_path, **extra))
    assert expected in problems(exc)


def test_relayer_rules(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_relayer(relayer(tmp_path, ledger="brokerage-aa"))
    assert problems(exc) == [
        ("ledger", "relayer for unknown ledger 'brokerage-aa' (did you mean 'brokerage-a'?)")
    ]
    with pytest.raises(ConfigError) as exc:
        load_relayer(relayer(tmp_path, msp_id="Org1MSP"))
    assert problems(exc) == [("msp_id", "kind evm takes no MSP identity")]
    data = network_data()
    data["ledgers"].append(fabric_ledger())
    with pytest.raises(ConfigError) as exc:
        load_relayer(relayer(tmp_path, data, ledger="brokerage-f", cert_file="c.pem"))
    assert problems(exc) == [("msp_id", "missing required key (kind fabric needs an MSP identity)")]


def test_verifier_rules(tmp_path: Path) -> None:
    ident = {"msp_id": "Org1MSP", "cert_file": "c.pem", "key_file": "k.pem"}
    path = verifier(
        tmp_path,
        rpc_overrides={"brokerage-z": "http://10.0.0.9:8545"},
        ledger_auth={"brokerage-y": {"token_file": "t"}},
        identities={"brokerage-a": ident},
        fabric_identities={"brokerage-x": ident},
        rotation={"min_overlap": 700, "max_overlap": 600},
    )
    with pytest.raises(ConfigError) as exc:
        load_verifier(path)
    assert [(p, m.partition(" (did")[0]) for p, m in problems(exc)] == [
        ("rpc_overrides.brokerage-z", "unknown ledger"),
        ("ledger_auth.brokerage-y", "unknown ledger"),
        ("fabric_identities", "identities and fabric_identities are exclusive"),
        ("fabric_identities.brokerage-x", "unknown ledger"),
        ("rotation.min_overlap", "must not exceed max_overlap"),
    ]


def test_a_building_refusal_is_chained_with_its_own_type(tmp_path: Path) -> None:
    from bridge.keys.errors import KeyRefInvalid

    path = relayer(tmp_path, key={"keystore": "k.json"})  # no passphrase source
    text = path.read_text().replace('key_file = "k"\n', "")
    path.write_text(text)
    with pytest.raises(ConfigError, match="exactly one of passphrase_file or passphrase_env") as e:
        load_relayer(path)
    assert isinstance(e.value.__cause__, KeyRefInvalid)
    assert e.value.problems[0].path == ""


# ---- environment overrides ----------------------------------------------------------------


def test_environment_overrides_daemon_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KSTB_RELAYER__POLL_INTERVAL", "0.5")
    monkeypatch.setenv("KSTB_RELAYER__METRICS__LISTEN", "127.0.0.1:9101")
    monkeypatch.setenv("KSTB_RELAYER__metrics__PROBE_INTERVAL", "3")
    cfg = load_relayer(relayer(tmp_path))
    assert cfg.poll_interval == 0.5
    assert cfg.observability.metrics.listen == "127.0.0.1:9101"
    assert cfg.observability.metrics.probe_interval == 3.0
    monkeypatch.setenv("KSTB_COORDINATOR__RELAYERS__brokerage-b", "10.0.0.7:7202")
    monkeypatch.setenv("KSTB_COORDINATOR__VERIFIERS", '["h:1", "h:2", "h:3", "h:4"]')
    coord = load_coordinator(coordinator(tmp_path))
    assert coord.relayers["brokerage-b"] == "10.0.0.7:7202"
    assert coord.verifiers == ("h:1", "h:2", "h:3", "h:4")


def test_environment_overrides_are_checked_like_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KSTB_RELAYER__POLL_INTERVALL", "0.5")
    monkeypatch.setenv("KSTB_RELAYER__METRICS__PROBE_INTERVAL", "0")
    monkeypatch.setenv("KSTB_RELAYER__LISTEN__PORT", "1")
    with pytest.raises(ConfigError) as exc:
        load_relayer(relayer(tmp_path))
    assert problems(exc) == [
        ("env KSTB_RELAYER__LISTEN__PORT", "'listen' is a value, not a table"),
        (
            "env KSTB_RELAYER__POLL_INTERVALL",
            "'poll_intervall': unknown key (did you mean 'poll_interval'?)",
        ),
        (
            "metrics.probe_interval",
            "must be greater than or equal to 0.1 (got 0) (set by KSTB_RELAYER__METRICS__PROBE_INTERVAL)",
        ),
    ]


@pytest.mark.security
def test_the_network_file_is_never_overridden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KSTB_NETWORK__COMMITTEE__THRESHOLD", "4")
    assert load_network(network(tmp_path)).committee.threshold == 3
    # Nor which network file a daemon reads (review finding 1): that is the trust anchor.
    monkeypatch.setenv("KSTB_VERIFIER__NETWORK", "/elsewhere/network.toml")
    with pytest.raises(ConfigError) as exc:
        load_verifier(verifier(tmp_path))
    assert problems(exc) == [
        ("env KSTB_VERIFIER__NETWORK", f"'network' {ENV_REFUSED}"),
    ]


SECURITY_CRITICAL = [
    ("relayer", "KSTB_RELAYER__NETWORK", "/tmp/evil.toml"),
    ("relayer", "KSTB_RELAYER__KEY_FILE", "/tmp/evil.key"),
    ("relayer", "KSTB_RELAYER__KEY__KEYSTORE", "/tmp/evil.json"),
    ("relayer", "KSTB_RELAYER__TLS__CA_FILES", '["/tmp/evil-ca.pem"]'),
    ("relayer", "KSTB_RELAYER__AUDIT_LOG", "/dev/null"),
    ("relayer", "KSTB_RELAYER__STATE_DB", "/tmp/other.db"),
    ("relayer", "KSTB_RELAYER__LEDGER_AUTH__TOKEN_FILE", "/tmp/t"),
    ("relayer", "KSTB_RELAYER__TRACING__ENDPOINT", "https://evil.example/v1/traces"),
    ("relayer", "KSTB_RELAYER__TRACING", '{endpoint = "https://evil.example"}'),
    ("verifier", "KSTB_VERIFIER__RPC_OVERRIDES__BROKERAGE-A", '{url = "https://evil"}'),
    ("verifier", "KSTB_VERIFIER__IDENTITIES__BROKERAGE-A", '{msp_id = "Evil"}'),
    ("verifier", "KSTB_VERIFIER__FABRIC_IDENTITIES", "{}"),
    ("verifier", "KSTB_VERIFIER__VOTE_DB", "/tmp/fresh.db"),
    ("verifier", "KSTB_VERIFIER__ROTATION__MAX_OVERLAP", "99999999"),
    ("coordinator", "KSTB_COORDINATOR__DATABASE", "/tmp/other.db"),
    ("coordinator", "KSTB_COORDINATOR__DATABASE_PASSWORD_FILE", "/tmp/pw"),
    ("coordinator", "KSTB_COORDINATOR__INSTRUCTION_MAX_AGE", "1e9"),
]


@pytest.mark.security
@pytest.mark.parametrize(("file", "var", "value"), SECURITY_CRITICAL)
def test_security_critical_keys_are_never_overridden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file: str, var: str, value: str
) -> None:
    """Review finding 1: an override of a trust, key, store, audit or export setting is
    refused, naming its variable; nothing of it reaches the loaded configuration."""
    from bridge.config_rules import apply_env, check_file

    path = {"relayer": relayer, "verifier": verifier, "coordinator": coordinator}[file](tmp_path)
    raw = tomllib.loads(path.read_text())
    merged, found, sources = apply_env(file, raw, {var: value})
    assert [(p.path, p.message.endswith(ENV_REFUSED)) for p in found] == [(f"env {var}", True)]
    assert merged == raw and sources == {}
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as exc:
        check_file(file, path)
    assert [p.path for p in exc.value.problems] == [f"env {var}"]


@pytest.mark.security
def test_applied_overrides_are_logged_and_listed_without_their_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from bridge.cli.main import main
    from bridge.config_rules import check_file

    path = relayer(tmp_path)
    monkeypatch.setenv("KSTB_RELAYER__POLL_INTERVAL", "0.731")
    with structlog.testing.capture_logs() as logs:
        check_file("relayer", path)
    assert [(e["key"], e["variable"]) for e in logs] == [
        ("poll_interval", "KSTB_RELAYER__POLL_INTERVAL")
    ]
    assert "0.731" not in repr(logs)
    assert main(["--json", "config", "check", str(path)]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["overrides"] == [
        {"path": "poll_interval", "variable": "KSTB_RELAYER__POLL_INTERVAL"}
    ]
    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "override poll_interval <- KSTB_RELAYER__POLL_INTERVAL" in out and "0.731" not in out


# ---- daemons refuse to start ----------------------------------------------------------------


@pytest.mark.parametrize("module", ["relayers", "bridge.coordinator", "verifiers"])
def test_a_daemon_refuses_a_bad_file_at_start(tmp_path: Path, module: str) -> None:
    network(tmp_path)
    bad = write(tmp_path / "bad.toml", {"network": "network.toml", "listne": "127.0.0.1:1"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("KSTB_")}
    out = subprocess.run(  # noqa: PLW1510 (the exit status is what is checked)
        [sys.executable, "-m", module, "--config", str(bad)],
        cwd=ROOT,
        env=env | {"KSTB_LOG_FORMAT": "json"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == EXIT_CONFIG, out.stderr
    text = out.stdout + out.stderr
    assert "configuration refused" in text
    assert "unknown key (did you mean 'listen'?)" in text
    assert "Traceback" not in text


# ---- the generated reference and the docs' examples ----------------------------------------


def test_the_configuration_reference_is_current() -> None:
    from bridge.tools.gen_config_docs import DOC, render

    assert DOC.read_text() == render(), "run python -m bridge.tools.gen_config_docs"


def _unknown(model: Any, data: dict[str, Any], loc: tuple[Any, ...] = ()) -> list[str]:
    out = []
    known = known_keys(model, loc)
    for key, value in data.items():
        if known and key not in known:
            out.append(".".join(map(str, (*loc, key))))
        elif isinstance(value, dict):
            out += _unknown(model, value, (*loc, key))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict) and (*loc, key) != ("ledgers",):
                    out += _unknown(model, item, (*loc, key, i))
    return out


def _examples() -> list[tuple[str, str]]:
    found = []
    for path in sorted([*ROOT.glob("docs/**/*.md"), ROOT / "README.md"]):
        for n, block in enumerate(re.findall(r"```toml\n(.*?)```", path.read_text(), re.S)):
            found.append((f"{path.relative_to(ROOT)}#{n}", block))
    return found


@pytest.mark.parametrize(("where", "block"), _examples(), ids=[w for w, _ in _examples()])
def test_every_toml_example_in_the_docs_uses_known_keys(where: str, block: str) -> None:
    """Each example is TOML whose keys some file knows at their path; each complete
    ``[[ledgers]]`` entry is valid for its kind (a finality depth written on EVM...)."""
    data = tomllib.loads(block)
    fits = {name: _unknown(model, data) for name, model in FILE_MODELS.items()}
    assert any(not unknown for unknown in fits.values()), fits
    for entry in data.get("ledgers", []):
        kind = get_kind(entry["kind"])
        table, bad = validate(kind.table, entry)
        assert bad == [], bad
        assert table is not None and table_problems(kind, table, entry) == []


def test_registered_kinds_are_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    for name in REGISTRY:
        assert f'`[[ledgers]]` with `kind = "{name}"`' in text


def test_problem_rendering() -> None:
    assert str(ConfigProblem("", "whole file")) == "whole file"
    assert str(ConfigProblem("a[0].b", "m")) == "a[0].b: m"


# ---- bridge config check ------------------------------------------------------------------


def test_bridge_config_check_reports_every_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from bridge.cli.main import main

    good = coordinator(tmp_path)
    bad = relayer(tmp_path, poll_intervall=1.0)
    net = tmp_path / "network.toml"
    assert main(["config", "check", str(good), str(net)]) == 0
    out = capsys.readouterr().out
    assert f"ok       {good} (coordinator)" in out and f"ok       {net} (network)" in out
    assert main(["--json", "config", "check", str(good), str(bad)]) == EXIT_CONFIG
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == {
        "file": str(good),
        "kind": "coordinator",
        "ok": True,
        "problems": [],
        "overrides": [],
    }
    assert lines[1]["kind"] == "relayer" and not lines[1]["ok"]
    assert lines[1]["problems"] == [
        {"path": "poll_intervall", "message": "unknown key (did you mean 'poll_interval'?)"}
    ]
    assert main(["config", "check", "--as", "verifier", str(good)]) == EXIT_CONFIG
    out = capsys.readouterr().out
    assert out.startswith(f"refused  {good} (verifier)") and "relayers: unknown key" in out


# ---- review finding 7: identities typed, key and client files fully checked ----------------


@pytest.mark.security
def test_identities_are_typed_with_their_path(tmp_path: Path) -> None:
    bad = {"msp_idd": "Org1MSP", "cert_file": 7, "key_file": "k"}
    for table in ("identities", "fabric_identities"):
        with pytest.raises(ConfigError) as exc:
            load_verifier(verifier(tmp_path, **{table: {"brokerage-b": bad}}))
        assert problems(exc) == [
            (f"{table}.brokerage-b.msp_id", "missing required key"),
            (f"{table}.brokerage-b.cert_file", "must be a string"),
            (f"{table}.brokerage-b.msp_idd", "unknown key (did you mean 'msp_id'?)"),
        ]


@pytest.mark.security
def test_config_check_parses_key_and_client_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--as key`` and ``--as client`` run the key and TLS parse, not only the shape: a
    key file with two sources, or a client whose key others can read, is refused."""
    from bridge.cli.main import main

    two = write(tmp_path / "key.toml", {"key_file": "k", "key": {"keystore": "ks.json"}})
    assert main(["config", "check", "--as", "key", str(two)]) == EXIT_CONFIG
    assert "refused" in capsys.readouterr().out
    network(tmp_path)
    (tmp_path / "c.pem").write_text("not a certificate")
    (tmp_path / "c.key").write_text("not a key")
    (tmp_path / "c.key").chmod(0o644)
    client = write(
        tmp_path / "client.toml",
        {"network": "network.toml", "tls": {"cert_file": "c.pem", "key_file": "c.key"}},
    )
    assert main(["config", "check", "--as", "client", str(client)]) == EXIT_CONFIG
    out = capsys.readouterr().out
    assert out.startswith(f"refused  {client} (client)") and "0600" in out
    (tmp_path / "c.key").chmod(0o600)  # now a readable pair that is not a pair
    assert main(["config", "check", "--as", "client", str(client)]) == EXIT_CONFIG
    out = capsys.readouterr().out
    assert out.startswith(f"refused  {client} (client)") and "are not a pair" in out
