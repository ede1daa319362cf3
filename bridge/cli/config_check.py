"""``bridge config check FILE...``: check configuration files offline, as the daemons will.

Each file goes through the same three passes a daemon runs at start (schema, rules between
keys and files, building; environment overrides included), without connecting anywhere.
The file's kind is given with ``--as`` or recognised from its keys. Exit status 0 when every
file passes, 78 (``EX_CONFIG``, as the daemons) when any is refused; ``--json`` prints one
object per file: ``{file, kind, ok, problems: [{path, message}], overrides: [{path,
variable}]}``; the environment overrides a file takes are listed (variable and path, never
the value).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bridge.config_errors import ConfigError, ConfigProblem
from bridge.config_rules import apply_env, check_file, overrides_unlogged, read_toml
from bridge.config_schema import FILE_MODELS
from bridge.daemon import EXIT_CONFIG
from bridge.domain.errors import BridgeError, InvalidInput

_MARKERS = (
    ("network", "committee"),
    ("coordinator", "relayers"),
    ("relayer", "state_db"),
    ("verifier", "vote_db"),
    ("client", "tls"),
)


def recognise(raw: Mapping[str, Any]) -> str:
    """The file kind its keys suggest (``key`` when none of the markers is present)."""
    return next((kind for kind, marker in _MARKERS if marker in raw), "key")


def _as_config_error(path: Path, load: Callable[[], object]) -> None:
    """Run ``load``; a typed refusal (BridgeError) or an unreadable file becomes a
    ConfigError of ``path``."""
    try:
        load()
    except BridgeError as exc:
        raise ConfigError(str(path), [ConfigProblem("", str(exc))]) from exc
    except OSError as exc:
        problem = ConfigProblem("", f"cannot read {exc.filename}: {exc.strerror}")
        raise ConfigError(str(path), [problem]) from exc


def load_key_file(path: Path) -> None:
    """A ``--key-config`` file as the CLI reads it: shape, then the key reference (one
    source, files 0600, a passphrase source present). Opens no key."""
    from bridge.keys.loader import load_key_config

    _as_config_error(path, lambda: load_key_config(path))


def load_client_file(path: Path) -> None:
    """A ``--client-config`` file as the CLI reads it: shape, its network file, its
    ``[tls]`` (key 0600, certificate and key a pair) and the trust roots the network file
    grants (review finding 7: not only the shape)."""
    from bridge.config import load_network, load_tls
    from bridge.rpc.roles import COORDINATOR, Role
    from bridge.rpc.tls import ClientIdentity, pair_matches

    _, raw = check_file("client", path)

    def load() -> None:
        tls = load_tls(raw, path.parent, str(path))
        if tls is None:
            raise InvalidInput(f"{path}: no [tls] table")
        if not pair_matches(tls.cert_file.read_bytes(), tls.key_file.read_bytes()):
            raise InvalidInput(f"{path}: tls.cert_file and tls.key_file are not a pair")
        ClientIdentity.to(load_network(path.parent / raw["network"]), tls, Role(COORDINATOR))

    _as_config_error(path, load)


def _loader(kind: str) -> Callable[[Path], object]:
    from bridge import config

    loaders: dict[str, Callable[[Path], object]] = {
        "network": config.load_network,
        "coordinator": config.load_coordinator,
        "relayer": config.load_relayer,
        "verifier": config.load_verifier,
        "key": load_key_file,
        "client": load_client_file,
    }
    return loaders.get(kind, lambda path: check_file(kind, path))


def check(path: Path, kind: str | None = None) -> tuple[str, list[ConfigProblem], str]:
    """``(kind, problems, file)`` of one file: empty problems when it would load. A problem
    in the network file a daemon file names is reported under that network file."""
    try:
        kind = kind or recognise(read_toml(path))
        with overrides_unlogged():
            _loader(kind)(path)
    except ConfigError as exc:
        return kind or "?", list(exc.problems), exc.file
    return kind, [], str(path)


def overrides(path: Path, kind: str) -> dict[str, str]:
    """Key path -> the ``KSTB_...`` variable overriding it in file ``path`` of ``kind``
    (empty when the file cannot be read)."""
    try:
        return apply_env(kind, read_toml(path), os.environ)[2]
    except ConfigError:
        return {}


def add_parser(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``config check``."""
    group = top.add_parser("config", help="check configuration files").add_subparsers(
        dest="cmd", required=True
    )
    c = group.add_parser("check", help="check files offline, as the daemons will at start")
    c.add_argument("files", nargs="+", type=Path)
    c.add_argument("--as", dest="kind", choices=sorted(FILE_MODELS), help="default: recognised")


def run(a: argparse.Namespace) -> int:
    """Check every file; print the result; EXIT_CONFIG when any is refused."""
    refused = False
    for path in a.files:
        kind, problems, file = check(path, a.kind)
        refused = refused or bool(problems)
        env = overrides(path, kind)
        if a.json:
            print(
                json.dumps(
                    {
                        "file": file,
                        "kind": kind,
                        "ok": not problems,
                        "problems": [{"path": p.path, "message": p.message} for p in problems],
                        "overrides": [{"path": k, "variable": v} for k, v in env.items()],
                    },
                    sort_keys=True,
                )
            )
        elif not problems:
            print(f"ok       {path} ({kind})")
        else:
            print(f"refused  {path} ({kind})")
            for p in problems:
                print(f"    {file}: {p}")
        if not a.json:
            for key, var in env.items():
                print(f"    override {key} <- {var}")
    return EXIT_CONFIG if refused else 0
