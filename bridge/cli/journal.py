"""The CLI's submission journal: the signed request, kept before it is sent (review F7).

A transfer's instruction carries a random nonce and a deadline, and the coordinator answers
a retry with the recorded transfer (or batch) only when the retry is the SAME signed request.
So ``bridge transfer submit`` and ``submit-batch`` write the signed request to a journal
file before the first send, and a later run for the same batch id (or idempotency key)
resends the journaled bytes instead of signing afresh. A different input under the same
batch id or key is refused here, before anything is sent.

Guarantees of this module:

- :func:`create` writes the journal atomically and exclusively (a temporary file, fsync,
  ``link`` into place, so a journal is either absent or complete, and a second writer
  never replaces the first one's), mode 0600 in a directory it creates 0700;
- :func:`load` refuses (:class:`~bridge.domain.errors.InvalidInput`) a journal that is
  readable or writable by anyone but its owner, not in this format, or not parseable;
- :meth:`Journal.check` refuses (:class:`~bridge.domain.errors.Conflict`) a journal made
  from another input, another source ledger or another batch id / key;
- :func:`derived_key` is a pure function of the batch id (or request), item index and
  item content, so a file line without ``idempotency_key`` gets the same key on every run.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from google.protobuf.message import DecodeError, Message

from bridge.domain.errors import Conflict, InvalidInput
from bridge.v1 import transfer_pb2

FORMAT = "kstb-cli-journal/1"
Kind = Literal["submit", "submit-batch"]

_ITEM_KEY_TAG = b"KSTB/cli/item-key/v1\x00"
_SUBMIT_KEY_TAG = b"KSTB/cli/submit-key/v1\x00"
_PATH_TAG = b"KSTB/cli/journal-path/v1\x00"
DERIVED_KEY_PREFIX = "cli-"
"""Prefix of the idempotency keys the CLI derives for requests that name none."""


def _canonical(fields: Mapping[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def derived_key(batch_id: str, source: str, index: int, entry: Mapping[str, Any]) -> str:
    """The idempotency key of a batch file's line ``index`` that names none: a hash of the
    source ledger, batch id, index and the line's fields (``cli-`` and 40 hex digits).
    The same file under the same batch id gives the same keys on every run, so a rerun
    without (or after losing) the journal can never create a second transfer of an item."""
    fields = {k: v for k, v in entry.items() if k != "idempotency_key"}
    digest = hashlib.sha256(
        _ITEM_KEY_TAG
        + _canonical({"batch_id": batch_id, "source": source, "index": index, "item": fields})
    )
    return DERIVED_KEY_PREFIX + digest.hexdigest()[:40]


def derived_submit_key(fields: Mapping[str, str]) -> str:
    """The idempotency key of ``bridge transfer submit`` without ``--idempotency-key``: a
    hash of the request's fields (security, ledgers, sender, recipient, amount). The same
    command is the same order: rerunning it answers the recorded transfer."""
    digest = hashlib.sha256(_SUBMIT_KEY_TAG + _canonical(dict(fields)))
    return DERIVED_KEY_PREFIX + digest.hexdigest()[:40]


def input_hash(data: bytes) -> str:
    """The SHA-256 (hex) a journal records of its input (the batch file's bytes or the
    canonical request fields)."""
    return hashlib.sha256(data).hexdigest()


def request_fields_hash(fields: Mapping[str, str]) -> str:
    """:func:`input_hash` of a single request's canonical fields (key included)."""
    return input_hash(_canonical(dict(fields)))


def _name_digest(kind: Kind, source: str, ident: str) -> str:
    return hashlib.sha256(_PATH_TAG + _canonical({"k": kind, "s": source, "i": ident})).hexdigest()


def default_batch_path(batch_file: Path, source: str, batch_id: str) -> Path:
    """Where ``submit-batch`` keeps a batch's journal unless ``--journal`` names one: next
    to the batch file, one file per (source ledger, batch id) whatever the file is called,
    so another file under the same batch id in that directory finds it and is refused."""
    digest = _name_digest("submit-batch", source, batch_id)[:24]
    return batch_file.resolve().parent / f".kstb-batch-{digest}.journal.json"


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/kstb/cli`` (default ``~/.local/state/kstb/cli``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "kstb" / "cli"


def default_submit_path(source: str, key: str) -> Path:
    """Where ``submit`` keeps a request's journal unless ``--journal`` names one: one file
    per (source ledger, idempotency key) under :func:`default_state_dir`."""
    return default_state_dir() / f"submit-{_name_digest('submit', source, key)[:24]}.journal.json"


@dataclass(frozen=True)
class Journal:
    """One journaled request: what was signed, for which input, and where it lives."""

    path: Path
    kind: Kind
    source_ledger: str
    ident: str
    """The batch id (``submit-batch``) or the idempotency key (``submit``)."""
    input_sha256: str
    written_at: int
    request: bytes
    """The signed request's serialisation, resent unchanged."""
    derived: tuple[int, ...] = ()
    """Indices of the items whose idempotency key the CLI derived."""

    def batch(self) -> transfer_pb2.SubmitTransfersRequest:
        """The journaled batch request (``submit-batch``)."""
        message = transfer_pb2.SubmitTransfersRequest()
        _parse(message, self.request, self.path)
        return message

    def single(self) -> transfer_pb2.SubmitTransferRequest:
        """The journaled single request (``submit``)."""
        message = transfer_pb2.SubmitTransferRequest()
        _parse(message, self.request, self.path)
        return message

    def check(self, kind: Kind, source_ledger: str, ident: str, input_sha256: str) -> None:
        """Raise Conflict unless this journal is for this kind of request, source ledger,
        batch id / key and input. SECURITY: resending a journal made from another input
        under the same id would answer that other batch's results as if they were this
        one's; signing the new input afresh would be ALREADY_EXISTS at best."""
        what = "batch id" if kind == "submit-batch" else "idempotency key"
        if (self.kind, self.source_ledger, self.ident) != (kind, source_ledger, ident):
            raise Conflict(
                f"journal {self.path} is for {self.kind} {self.ident!r} from"
                f" {self.source_ledger!r}, not {kind} {ident!r} from {source_ledger!r};"
                " give another --journal"
            )
        if self.input_sha256 != input_sha256:
            written = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.written_at))
            raise Conflict(
                f"the {what} {ident!r} was already used for another input (journal"
                f" {self.path}, written {written},"
                f" input sha256 {self.input_sha256[:16]}..., this input {input_sha256[:16]}...):"
                f" refused before sending; use a new {what} for a different input (or, only"
                " if the coordinator refused the earlier request as a whole, so that nothing"
                f" was recorded under it, delete {self.path})"
            )


def _parse(message: Message, raw: bytes, path: Path) -> None:
    try:
        message.ParseFromString(raw)
    except DecodeError:
        raise InvalidInput(f"journal {path}: the journaled request does not parse") from None


def serialise(
    request: transfer_pb2.SubmitTransfersRequest | transfer_pb2.SubmitTransferRequest,
) -> bytes:
    """The bytes a journal keeps (deterministic serialisation)."""
    return request.SerializeToString(deterministic=True)


def create(journal: Journal) -> bool:
    """Write ``journal`` to its path atomically, exclusively and 0600; False (nothing
    written) when a journal already exists there (another run got there first: load it).
    Raises OSError when it cannot be written: then nothing may be sent."""
    body = _canonical(
        {
            "format": FORMAT,
            "kind": journal.kind,
            "source_ledger": journal.source_ledger,
            "id": journal.ident,
            "input_sha256": journal.input_sha256,
            "written_at": journal.written_at,
            "derived_keys": list(journal.derived),
            "request": base64.b64encode(journal.request).decode(),
        }
    )
    directory = journal.path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{journal.path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:  # mkstemp: 0600, owned by us
            f.write(body + b"\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, journal.path)  # atomic and exclusive: never replaces a journal
        except FileExistsError:
            return False
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def load(path: Path) -> Journal | None:
    """The journal at ``path``, or None when there is none. InvalidInput for a journal
    another user may read or write (SECURITY: it holds signed instructions that are live
    until their deadline, and a replaced journal would be resent) or a malformed one."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInput(f"journal {path} is not a regular file")
    if st.st_mode & 0o077 or st.st_uid != os.getuid():
        raise InvalidInput(
            f"journal {path} has mode {stat.S_IMODE(st.st_mode):04o} and owner {st.st_uid}:"
            " a journal must be owned by this user with mode 0600"
        )
    try:
        data = json.loads(path.read_bytes())
        if data.get("format") != FORMAT or data.get("kind") not in ("submit", "submit-batch"):
            raise ValueError("not a journal of this format")
        return Journal(
            path=path,
            kind=data["kind"],
            source_ledger=str(data["source_ledger"]),
            ident=str(data["id"]),
            input_sha256=str(data["input_sha256"]),
            written_at=int(data["written_at"]),
            request=base64.b64decode(data["request"], validate=True),
            derived=tuple(int(i) for i in data.get("derived_keys", [])),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidInput(f"journal {path} is malformed: {exc}") from None
