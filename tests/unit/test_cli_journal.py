"""The CLI's submission journal (review F7) and its answer checks (review F8).

``bridge transfer submit-batch`` / ``submit`` journal the signed request before the first
send; a rerun resends the same bytes, another input under the same batch id or key is
refused before anything is sent, keyless items get deterministic keys, and an answer that
is not the transfer signed is refused (exit 4). The coordinator here is a fake with the
real coordinator's idempotency rules (ADR 0023 §5, brokerage-integration §3.2); the devnet
run of the same scenario is tests/e2e/test_batch.py.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import grpc
import pytest

from bridge.cli import journal
from bridge.cli import main as cli
from bridge.cli.answers import AnswerMismatch, Expected, check_transfer, expected_of
from bridge.config import dump_toml, load_network
from bridge.devnet.anvil import DevAccount, write_key_file
from bridge.domain.errors import Conflict, InvalidInput
from bridge.keys.loader import PLAINTEXT_KEYS_ENV
from bridge.v1 import transfer_pb2 as S
from tests.unit.test_config import network_data

pytestmark = [pytest.mark.unit, pytest.mark.batch, pytest.mark.security]

A, B, ISIN = "brokerage-a", "brokerage-b", "KR7005930003"
OUT = S.BatchItemOutcome


class Failed(grpc.RpcError):
    """A failed call as grpc raises it (code, details, no trailers)."""

    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[()]:
        return ()


class FakeCoordinator:
    """SubmitTransfer(s) with the coordinator's idempotency rules: one transfer per key,
    the same signed item answers EXISTING, another is a CONFLICT refusal; one batch row per
    batch id, the same request answers the record, another is ALREADY_EXISTS.
    ``fail_after`` items, the call fails DEADLINE_EXCEEDED (items kept, no batch row)."""

    def __init__(self, network: Any) -> None:
        self.network = network
        self.transfers: dict[str, bytes] = {}
        self.batches: dict[str, tuple[bytes, S.SubmitTransfersResponse]] = {}
        self.fail_after: int | None = None
        self.exhausted = False  # SubmitTransfer answers RESOURCE_EXHAUSTED, records nothing
        self.lie = False
        self.calls: list[bytes] = []
        # Per idempotency key, how the answer is shaped: "retryable" (nothing recorded, a
        # transient reason), "unreadable" (recorded, its record not readable now: no
        # transfer, an INTERNAL error), "bare" (recorded, answered with neither).
        self.shape: dict[str, str] = {}

    def _transfer(self, item: S.SubmitTransferRequest) -> S.Transfer:
        expected = expected_of(self.network, item)
        assert expected is not None
        tid = expected.transfer_id
        if self.lie:  # a compromised coordinator: another transfer's id
            tid = "0x" + "ab" * 32
        return S.Transfer(
            transfer_id=tid, idempotency_key=item.idempotency_key, security_id=item.security_id,
            source_ledger=item.source_ledger, target_ledger=item.target_ledger,
            sender=item.sender, recipient=item.recipient, amount=item.amount,
            state=S.TRANSFER_STATE_SUBMITTED,
        )  # fmt: skip

    def _item(self, index: int, item: S.SubmitTransferRequest) -> S.BatchItemResult:
        raw = item.SerializeToString(deterministic=True)
        key = item.idempotency_key
        if expected_of(self.network, item) is None:
            return S.BatchItemResult(
                index=index, idempotency_key=key, outcome=OUT.BATCH_ITEM_OUTCOME_REFUSED,
                error=S.BatchItemError(code="INVALID_ARGUMENT", reason="INVALID_REQUEST"),
            )  # fmt: skip
        if key in self.transfers and self.transfers[key] != raw:
            return S.BatchItemResult(
                index=index, idempotency_key=key, outcome=OUT.BATCH_ITEM_OUTCOME_REFUSED,
                error=S.BatchItemError(code="ALREADY_EXISTS", reason="CONFLICT"),
            )  # fmt: skip
        shape = self.shape.get(key)
        if shape == "retryable":
            return S.BatchItemResult(
                index=index, idempotency_key=key, outcome=OUT.BATCH_ITEM_OUTCOME_RETRYABLE,
                error=S.BatchItemError(code="UNAVAILABLE", reason="UNAVAILABLE",
                                       metadata={"retryable": "true"}),
            )  # fmt: skip
        outcome = OUT.BATCH_ITEM_OUTCOME_EXISTING if key in self.transfers else None
        self.transfers[key] = raw
        result = S.BatchItemResult(
            index=index, idempotency_key=key,
            outcome=outcome or OUT.BATCH_ITEM_OUTCOME_CREATED, transfer=self._transfer(item),
        )  # fmt: skip
        if shape in ("unreadable", "bare", "unknown"):
            result.ClearField("transfer")
        if shape == "unknown":
            result.outcome = OUT.BATCH_ITEM_OUTCOME_UNSPECIFIED
        if shape == "refused-with-transfer":
            result.outcome = OUT.BATCH_ITEM_OUTCOME_REFUSED
            result.error.CopyFrom(S.BatchItemError(code="FAILED_PRECONDITION", reason="X"))
        if shape == "other-key":
            result.idempotency_key = "someone-else"
        if shape == "unreadable":
            result.error.CopyFrom(S.BatchItemError(
                code="INTERNAL", reason="INTERNAL",
                message="transfer 0x..: its record cannot be read now",
            ))  # fmt: skip
        return result

    def SubmitTransfers(self, request: S.SubmitTransfersRequest, timeout: float) -> Any:
        raw = request.SerializeToString(deterministic=True)
        self.calls.append(raw)
        if request.batch_id in self.batches:
            recorded, resp = self.batches[request.batch_id]
            if recorded != raw:
                raise Failed(grpc.StatusCode.ALREADY_EXISTS, "batch id used for another request")
            again = S.SubmitTransfersResponse()
            again.CopyFrom(resp)
            again.created = False
            return again
        results = []
        for index, item in enumerate(request.items):
            if self.fail_after is not None and index == self.fail_after:
                self.fail_after = None
                raise Failed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            results.append(self._item(index, item))
        resp = S.SubmitTransfersResponse(batch_id=request.batch_id, created=True, results=results)
        self.batches[request.batch_id] = (raw, resp)
        return resp

    def SubmitTransfer(self, request: S.SubmitTransferRequest, timeout: float) -> Any:
        self.calls.append(request.SerializeToString(deterministic=True))
        if self.exhausted:
            raise Failed(grpc.StatusCode.RESOURCE_EXHAUSTED, "max_unfinished_per_ledger 3")
        if self.fail_after == 0:
            self.fail_after = None
            self.transfers[request.idempotency_key] = request.SerializeToString(deterministic=True)
            raise Failed(grpc.StatusCode.UNAVAILABLE, "connection dropped")
        result = self._item(0, request)
        if result.HasField("error"):
            raise Failed(grpc.StatusCode.ALREADY_EXISTS, "key used for another request")
        return S.SubmitTransferResponse(
            transfer=result.transfer, created=result.outcome == OUT.BATCH_ITEM_OUTCOME_CREATED
        )


class Closing:
    def close(self) -> None:
        pass


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    network_file = tmp_path / "network.toml"
    network_file.write_text(dump_toml(network_data()))
    key = tmp_path / "instruction.key"
    write_key_file(key, DevAccount.generate())
    monkeypatch.setenv(PLAINTEXT_KEYS_ENV, "1")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    fake = FakeCoordinator(load_network(network_file))
    monkeypatch.setattr(cli, "_stub", lambda a: (Closing(), fake))
    return {"network": network_file, "key": key, "fake": fake, "dir": tmp_path}


def _line(amount: str, key: str | None = None) -> dict[str, str]:
    line = {"security": ISIN, "to": B, "amount": amount,
            "sender": "0x" + "11" * 20, "recipient": "0x" + "22" * 20}  # fmt: skip
    if key:
        line["idempotency_key"] = key
    return line


def _file(path: Path, lines: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _batch(env: dict[str, Any], file: Path, batch_id: str, *extra: str) -> list[str]:
    return ["--json", "transfer", "submit-batch", str(file), "--from", A, "--batch-id", batch_id,
            "--network", str(env["network"]), "--instruction-key", str(env["key"]), *extra]  # fmt: skip


def _rows(out: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in out.splitlines() if x.startswith("{")]


def test_a_timed_out_batch_rerun_resends_the_same_bytes_and_moves_nothing_twice(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fake: FakeCoordinator = env["fake"]
    file = _file(env["dir"] / "eod.jsonl", [_line("1", "k-1"), _line("2"), _line("3")])
    fake.fail_after = 2  # items 0 and 1 recorded, then the call times out
    assert cli.main(_batch(env, file, "eod-1")) == 5  # run it again later
    err = capsys.readouterr().err
    assert "DEADLINE_EXCEEDED" in err and "run the same command again" in err
    assert set(fake.transfers) >= {"k-1"} and len(fake.transfers) == 2
    journals = list(env["dir"].glob(".kstb-batch-*.journal.json"))
    assert len(journals) == 1
    assert stat.S_IMODE(journals[0].stat().st_mode) == 0o600

    assert cli.main(_batch(env, file, "eod-1")) == 0
    captured = capsys.readouterr()
    assert "resending the batch journaled in" in captured.err
    assert "item 1: no idempotency_key in the file, derived cli-" in captured.err
    assert fake.calls[0] == fake.calls[1]  # byte for byte
    rows = _rows(captured.out)
    assert [r["outcome"] for r in rows] == [
        "BATCH_ITEM_OUTCOME_EXISTING", "BATCH_ITEM_OUTCOME_EXISTING", "BATCH_ITEM_OUTCOME_CREATED",
    ]  # fmt: skip
    assert [r.get("key_derived", False) for r in rows] == [False, True, True]
    assert len(fake.transfers) == 3  # each item once

    # Recorded: every further rerun prints the recorded results.
    assert cli.main(_batch(env, file, "eod-1")) == 0
    again = _rows(capsys.readouterr().out)
    assert [r["transfer"]["transfer_id"] for r in again] == [
        r["transfer"]["transfer_id"] for r in rows
    ]
    assert len(set(fake.calls)) == 1 and len(fake.transfers) == 3


def test_another_file_under_the_same_batch_id_is_refused_before_sending(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fake: FakeCoordinator = env["fake"]
    first = _file(env["dir"] / "one.jsonl", [_line("1")])
    assert cli.main(_batch(env, first, "eod-2")) == 0
    other = _file(env["dir"] / "two.jsonl", [_line("5")])
    sent = len(fake.calls)
    assert cli.main(_batch(env, other, "eod-2")) == 2
    err = capsys.readouterr().err
    assert "the batch id 'eod-2' was already used for another input" in err
    assert "refused before sending" in err
    assert len(fake.calls) == sent  # nothing sent
    # The same file edited in place: refused the same way.
    first.write_text(first.read_text().replace('"1"', '"9"'))
    assert cli.main(_batch(env, first, "eod-2")) == 2
    assert len(fake.calls) == sent


def test_a_tampered_journal_is_refused(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fake: FakeCoordinator = env["fake"]
    file = _file(env["dir"] / "t.jsonl", [_line("1", "k-t")])
    fake.fail_after = 0
    assert cli.main(_batch(env, file, "eod-3")) == 5
    (path,) = env["dir"].glob(".kstb-batch-*.journal.json")
    data = json.loads(path.read_text())
    request = S.SubmitTransfersRequest.FromString(base64.b64decode(data["request"]))
    request.items[0].amount = "1000"  # another amount, its input hash kept
    data["request"] = base64.b64encode(request.SerializeToString()).decode()
    path.write_text(json.dumps(data))
    sent = len(fake.calls)
    assert cli.main(_batch(env, file, "eod-3")) == 2
    assert "does not hold the items of" in capsys.readouterr().err
    os.chmod(path, 0o644)
    assert cli.main(_batch(env, file, "eod-3")) == 2
    assert "must be owned by this user with mode 0600" in capsys.readouterr().err
    assert len(fake.calls) == sent


def test_submit_without_a_key_derives_one_and_a_retry_is_the_same_transfer(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fake: FakeCoordinator = env["fake"]
    argv = ["--json", "transfer", "submit", "--security", ISIN, "--from", A, "--to", B,
            "--sender", "0x" + "11" * 20, "--recipient", "0x" + "22" * 20, "--amount", "4",
            "--network", str(env["network"]), "--instruction-key", str(env["key"])]  # fmt: skip
    fake.fail_after = 0  # recorded, but the answer is lost
    assert cli.main(argv) == 5  # as a batch's retryable items: run it again
    err = capsys.readouterr().err
    assert "idempotency key derived from the request: cli-" in err
    assert cli.main(argv) == 0
    out = capsys.readouterr()
    assert "resending the request journaled in" in out.err
    assert json.loads(out.out)["transfer_id"].startswith("0x")
    assert fake.calls[0] == fake.calls[1] and len(fake.transfers) == 1
    # The same explicit key with another amount: refused locally, nothing sent.
    key = json.loads(out.out)["idempotency_key"]
    other = [*argv, "--idempotency-key", key]
    other[other.index("4")] = "5"
    assert cli.main(other) == 2
    assert "already used for another input" in capsys.readouterr().err
    assert len(fake.calls) == 2
    # A tampered journal (another recipient signed in, the input hash kept): refused.
    (path,) = (env["dir"] / "state" / "kstb" / "cli").glob("submit-*.journal.json")
    data = json.loads(path.read_text())
    request = S.SubmitTransferRequest.FromString(base64.b64decode(data["request"]))
    request.recipient = "0x" + "33" * 20
    data["request"] = base64.b64encode(request.SerializeToString()).decode()
    path.write_text(json.dumps(data))
    assert cli.main(argv) == 2
    assert "does not hold this request" in capsys.readouterr().err
    assert len(fake.calls) == 2


def test_a_submission_past_a_bound_says_nothing_was_recorded_and_a_rerun_sends_it(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """RESOURCE_EXHAUSTED (max_unfinished_per_ledger): the operator reads that nothing was
    recorded and that the same command is to be run again later; it resends the same
    journaled request."""
    fake: FakeCoordinator = env["fake"]
    argv = ["--json", "transfer", "submit", "--security", ISIN, "--from", A, "--to", B,
            "--sender", "0x" + "11" * 20, "--recipient", "0x" + "22" * 20, "--amount", "4",
            "--network", str(env["network"]), "--instruction-key", str(env["key"])]  # fmt: skip
    fake.exhausted = True
    assert cli.main(argv) == 5
    err = capsys.readouterr().err
    assert "nothing was recorded now" in err and "run the same command again" in err
    fake.exhausted = False
    assert cli.main(argv) == 0
    assert fake.calls[0] == fake.calls[1] and len(fake.transfers) == 1


def test_an_answer_that_is_not_the_signed_transfer_is_refused(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    env["fake"].lie = True
    file = _file(env["dir"] / "lie.jsonl", [_line("1", "k-lie")])
    assert cli.main(_batch(env, file, "eod-4")) == 4
    err = capsys.readouterr().err
    assert "not the one signed: transfer_id '0x" + "ab" * 32 in err
    assert "do not book it" in err


def test_retryable_and_unreadable_items_are_not_a_mismatch_and_exit_5(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """A RETRYABLE item (nothing recorded) and a recorded item whose record the
    coordinator cannot read now come without a transfer: that is not an answer about
    another transfer (before, both were checked as an empty transfer and the CLI exited 4,
    "do not book it"). They exit 5 (run the same command again), after the refused count;
    the other items are checked as before."""
    fake: FakeCoordinator = env["fake"]
    fake.shape = {"k-r": "retryable", "k-u": "unreadable"}
    lines = [_line("1", "k-ok"), _line("2", "k-r"), _line("3", "k-u"), _line("-4", "k-bad")]
    assert cli.main(_batch(env, _file(env["dir"] / "p.jsonl", lines), "eod-5")) == 5
    captured = capsys.readouterr()
    assert "2 of 4 items need another run" in captured.err and "1 refused" in captured.err
    rows = _rows(captured.out)
    assert [r["outcome"] for r in rows] == [
        "BATCH_ITEM_OUTCOME_CREATED", "BATCH_ITEM_OUTCOME_RETRYABLE",
        "BATCH_ITEM_OUTCOME_CREATED", "BATCH_ITEM_OUTCOME_REFUSED",
    ]  # fmt: skip
    assert "transfer" not in rows[2] and rows[2]["error"]["code"] == "INTERNAL"
    assert "k-r" not in fake.transfers and "k-u" in fake.transfers
    # Only refusals left: exit 3, as before.
    fake.shape = {}
    lines = [_line("1", "k-ok-2"), _line("-4", "k-bad-2")]
    assert cli.main(_batch(env, _file(env["dir"] / "q.jsonl", lines), "eod-6")) == 3


@pytest.mark.parametrize(
    ("shape", "said"),
    [
        ("bare", "recorded, yet answered without its transfer or an error"),
        # Review helper-116 M2: an outcome it does not know, no transfer, no error (exit 0
        # before the shapes were checked).
        ("unknown", "an outcome this client does not know (0)"),
        ("refused-with-transfer", "BATCH_ITEM_OUTCOME_REFUSED must come with an error and no"),
        ("other-key", "answered key 'someone-else', not 'k-x'"),
    ],
)
def test_an_answer_whose_shape_does_not_fit_its_outcome_is_a_mismatch(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str], shape: str, said: str
) -> None:
    env["fake"].shape = {"k-x": shape}
    file = _file(env["dir"] / "x.jsonl", [_line("1", "k-x")])
    assert cli.main(_batch(env, file, "eod-7")) == 4
    assert said in capsys.readouterr().err


# ---- the journal itself


def _journal(path: Path, digest: str = "aa" * 32) -> journal.Journal:
    return journal.Journal(path, "submit-batch", A, "b-1", digest, 1, b"\x0a\x03b-1", (1,))


def test_the_journal_is_written_atomically_exclusively_and_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "j.json"
    assert journal.create(_journal(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert journal.load(path) == _journal(path)
    assert not journal.create(_journal(path, "bb" * 32))  # never replaces the first
    loaded = journal.load(path)
    assert loaded is not None and loaded.input_sha256 == "aa" * 32
    assert [p.name for p in path.parent.iterdir()] == ["j.json"]  # no temporary left
    assert journal.load(tmp_path / "none.json") is None


def test_a_journal_for_another_input_or_id_is_a_conflict(tmp_path: Path) -> None:
    j = _journal(tmp_path / "j.json")
    j.check("submit-batch", A, "b-1", "aa" * 32)
    with pytest.raises(Conflict, match="already used for another input"):
        j.check("submit-batch", A, "b-1", "cc" * 32)
    with pytest.raises(Conflict, match="give another --journal"):
        j.check("submit-batch", B, "b-1", "aa" * 32)
    with pytest.raises(Conflict, match="give another --journal"):
        j.check("submit", A, "b-1", "aa" * 32)


def test_a_malformed_or_exposed_journal_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.json"
    assert journal.create(_journal(path))
    os.chmod(path, 0o640)
    with pytest.raises(InvalidInput, match="mode 0640"):
        journal.load(path)
    os.chmod(path, 0o600)
    path.write_text('{"format": "other"}')
    with pytest.raises(InvalidInput, match="malformed"):
        journal.load(path)
    path.write_text("not json")
    with pytest.raises(InvalidInput, match="malformed"):
        journal.load(path)


def test_derived_keys_are_deterministic_and_bound_to_batch_index_and_content() -> None:
    line = _line("1")
    key = journal.derived_key("b-1", A, 0, line)
    assert key == journal.derived_key("b-1", A, 0, dict(reversed(line.items())))
    assert key.startswith("cli-") and len(key) == 44
    others = {
        journal.derived_key("b-2", A, 0, line),
        journal.derived_key("b-1", B, 0, line),
        journal.derived_key("b-1", A, 1, line),
        journal.derived_key("b-1", A, 0, _line("2")),
    }
    assert key not in others and len(others) == 4
    paths = {journal.default_batch_path(Path("x/f.jsonl"), A, b) for b in ("b-1", "b-2")}
    assert len(paths) == 2
    assert journal.default_batch_path(Path("x/f.jsonl"), A, "b-1") == journal.default_batch_path(
        Path("x/g.jsonl"), A, "b-1"
    )


def test_check_transfer_refuses_any_field_that_differs() -> None:
    want = Expected("0x" + "01" * 32, "k", ISIN, A, B, "0x" + "11" * 20, "0x" + "22" * 20, "5")
    good = S.Transfer(
        transfer_id=want.transfer_id, idempotency_key="k", security_id=ISIN, source_ledger=A,
        target_ledger=B, sender=want.sender.upper().replace("0X", "0x"),
        recipient=want.recipient, amount="5",
    )  # fmt: skip
    check_transfer(want, good, "t")
    for field, value in (("transfer_id", "0x" + "02" * 32), ("amount", "6"),
                         ("recipient", "0x" + "33" * 20), ("target_ledger", A),
                         ("idempotency_key", "k2"), ("security_id", "US0378331005")):  # fmt: skip
        bad = S.Transfer()
        bad.CopyFrom(good)
        setattr(bad, field, value)
        with pytest.raises(AnswerMismatch, match=field):
            check_transfer(want, bad, "t")
    with pytest.raises(AnswerMismatch, match="makes none"):
        check_transfer(None, good, "t")


def test_only_a_submission_to_run_again_exits_5(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 5 means "the same command, later" (a timeout, an unavailable coordinator, a
    bound: as a batch's RETRYABLE items); a refusal that running it again cannot change
    exits 1. Here another request holds the batch id at the coordinator (not in the
    journal): ALREADY_EXISTS."""
    fake: FakeCoordinator = env["fake"]
    fake.batches["eod-taken"] = (b"another request", S.SubmitTransfersResponse())
    file = _file(env["dir"] / "x.jsonl", [_line("1", "k-x")])
    assert cli.main(_batch(env, file, "eod-taken")) == 1
    err = capsys.readouterr().err
    assert "ALREADY_EXISTS" in err and "use a new batch id or key" in err
    assert fake.transfers == {}
