"""Generate ``docs/configuration.md``, the reference of every configuration key.

``python -m bridge.tools.gen_config_docs`` rewrites the file from the schema models
(:data:`bridge.config_schema.FILE_MODELS`) and every built-in ledger kind's ``[[ledgers]]``
model (:data:`bridge.ledgers.kinds.REGISTRY`): each key's type, default, range and
description (the attribute docstring). ``--check`` exits 1 when the committed file differs
(a key was added or changed without regenerating). Deterministic: the output depends only on
those models. :func:`alternatives` and :func:`constraints` are also what the tests use to
generate a wrong value for every key.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from bridge.config_rules import ENV_ALLOWED, ENV_PREFIX
from bridge.config_schema import ENV_FILES, FILE_MODELS
from bridge.ledgers.kinds import REGISTRY, LedgerTable, get_kind

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

FORMATS = {
    "_listen": "`host:port` (port 0-65535; 0 = ephemeral) or `unix:PATH`",
    "_target": "`host:port` (port 1-65535) or `unix:PATH`",
    "_optional_target": "'' or `host:port` (port 1-65535)",
    "_metrics_listen": "'' or `host:port`, host an IP address or `localhost`",
    "_http_url": "'' or an `http(s)://` URL",
}
"""How each validator of :mod:`bridge.config_schema` reads in the reference."""

FILE_TITLES = {
    "network": "network.toml",
    "coordinator": "coordinator.toml",
    "relayer": "relayer.toml",
    "verifier": "verifier.toml",
    "client": "client config (`bridge ... --client-config`)",
    "key": "key config (`bridge ... --key-config`)",
}


def alternatives(annotation: Any, metadata: list[Any] | None = None) -> list[tuple[Any, list[Any]]]:
    """The annotation's alternatives as ``(base type, metadata)``: ``Annotated`` unwrapped
    (its constraints collected), unions split, ``None`` kept as ``type(None)``."""
    meta = list(metadata or [])
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *extra = get_args(annotation)
        for item in extra:
            meta += item.metadata if isinstance(item, FieldInfo) else [item]
        return alternatives(base, meta)
    if origin is Union or isinstance(annotation, types.UnionType):
        return [alt for a in get_args(annotation) for alt in alternatives(a, meta)]
    return [(annotation, meta)]


def constraints(metadata: list[Any]) -> list[str]:
    """Readable ranges and formats of one alternative."""
    out = []
    for m in metadata:
        for attr, text in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if getattr(m, attr, None) is not None:
                out.append(f"{text} {getattr(m, attr)}")
        if getattr(m, "min_length", None):
            out.append(f"length >= {m.min_length}")
        if getattr(m, "pattern", None):
            out.append(f"matches `{m.pattern}`")
        func = getattr(m, "func", None)
        if func is not None and func.__name__ in FORMATS:
            out.append(FORMATS[func.__name__])
    return out


def _is_model(a: Any) -> bool:
    return isinstance(a, type) and issubclass(a, BaseModel)


def type_text(annotation: Any, metadata: list[Any] | None = None) -> str:
    """The key's type in words (``number``, ``array of string``, ``table``...)."""
    names = []
    for base, _ in alternatives(annotation, metadata):
        if base is type(None):
            continue
        origin = get_origin(base)
        if origin is list:
            names.append(f"array of {type_text(get_args(base)[0])}")
        elif origin is dict and get_args(base)[1] is Any:
            names.append("table")
        elif origin is dict:
            names.append(f"table of {type_text(get_args(base)[1])} by name")
        elif _is_model(base):
            names.append("table")
        else:
            names.append(
                {str: "string", int: "integer", float: "number", bool: "boolean"}.get(base, "any")
            )
    return " or ".join(dict.fromkeys(names))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    value = field.default
    if value is None:
        return "none"
    if isinstance(value, BaseModel):
        return "(table defaults)"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value!r}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("``", "`").replace("|", "\\|")


def _ranges(annotation: Any, metadata: list[Any] | None = None) -> list[str]:
    """Constraints of every alternative, and of array items / table values ("each ...")."""
    out = []
    for base, meta in alternatives(annotation, metadata):
        out += constraints(meta)
        origin = get_origin(base)
        inner = (
            get_args(base)[0] if origin is list else get_args(base)[1] if origin is dict else None
        )
        if inner is not None and not _is_model(inner):
            out += [f"each {c}" for c in _ranges(inner)]
    return list(dict.fromkeys(out))


def _rows(model: type[BaseModel], skip: tuple[str, ...] = ()) -> list[str]:
    lines = ["| key | type | default | range / format | description |", "|---|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        ranges = _ranges(field.annotation, field.metadata)
        lines.append(
            f"| `{name}` | {type_text(field.annotation, field.metadata)} | {_default(field)}"
            f" | {_cell('; '.join(ranges))} | {_cell(field.description or '')} |"
        )
    return lines


def _sub_tables(model: type[BaseModel], prefix: str) -> list[tuple[str, type[BaseModel]]]:
    out: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        for base, _ in alternatives(field.annotation, field.metadata):
            origin = get_origin(base)
            if _is_model(base):
                out.append((f"[{path}]", base))
            elif origin is list:
                out += [
                    (f"[[{path}]]", b) for b, _ in alternatives(get_args(base)[0]) if _is_model(b)
                ]
            elif origin is dict:
                out += [
                    (f"[{path}.<name>]", b)
                    for b, _ in alternatives(get_args(base)[1])
                    if _is_model(b)
                ]
    return out


def _section(title: str, model: type[BaseModel], prefix: str, level: int) -> list[str]:
    lines = [f"{'#' * level} {title}", "", _cell(model.__doc__ or ""), "", *_rows(model), ""]
    for sub_title, sub in _sub_tables(model, prefix):
        path = sub_title.strip("[]").replace(".<name>", "")
        lines += _section(f"`{sub_title}`", sub, path, level + 1)
    return lines


def _env_allowed_table() -> str:
    rows = ["| File | Keys the environment may set |", "|---|---|"]
    for file in ENV_FILES:
        keys = ", ".join(f"`{k}`" for k in sorted(ENV_ALLOWED[file]))
        rows.append(f"| `{file}` | {keys} |")
    return "\n".join(rows)


_INTRO = f"""# Configuration reference

<!-- Generated by `python -m bridge.tools.gen_config_docs` from bridge/config_schema.py and
the ledger kinds' models; do not edit by hand (tests/unit/test_config_rules.py checks it). -->

Every file is TOML. Relative paths are resolved against the directory of the file naming
them. Each file is checked in three passes, and a daemon refuses to start at the first that
fails, logging one JSON line `configuration refused` whose `problems` list every problem as
`{{path, message}}` and exiting with status 78 (`EX_CONFIG`):

1. **shape**: unknown keys (`ledgers.fab.finalty_depth: unknown key (did you mean
   'finality_depth'?)`), wrong types (strict: `"30"` is not a number), ranges and formats
   below;
2. **rules between keys and files**: the committee's threshold reachable (`2t > n`,
   `t <= n`, distinct members; the coordinator reaches at least `t` genesis members unless
   members of later epochs are reachable), a relayer for every ledger and none for an
   unknown one, `finality_depth` written for a kind whose finality is probabilistic,
   addresses valid for their ledger's kind, ISINs distinct, per-ledger tables naming
   configured ledgers, an MSP identity on a relayer exactly when its ledger's kind has
   identities, `rotation.min_overlap <= rotation.max_overlap`, the metrics listener apart
   from the gRPC one;
3. **building**: files that must be readable (CAs, revocation lists, TLS keys 0600),
   EIP-55 checksums, roles, key references, database URLs.

## Environment overrides

Keys of the daemon files ({", ".join(f"`{f}`" for f in ENV_FILES)}) may be overridden by
environment variables `{ENV_PREFIX}<FILE>__<KEY>[__<SUBKEY>...]` (names case-insensitive,
`__` between levels), e.g. `{ENV_PREFIX}RELAYER__POLL_INTERVAL=0.5`,
`{ENV_PREFIX}VERIFIER__METRICS__LISTEN=0.0.0.0:9101`,
`{ENV_PREFIX}COORDINATOR__RELAYERS__brokerage-a=10.0.0.7:7201`. The value is read as a TOML
value (`0.5`, `true`, `["a:1", "b:2"]`), else as a string. An override of an unknown key is
refused like a misspelt key, and a problem in an overridden value names its variable
(`(set by {ENV_PREFIX}RELAYER__POLL_INTERVAL)`). The network file is never overridden: it is
the trust anchor every party must read identically.

Only these keys (and every key of a table listed) may come from the environment; any other
is refused naming its variable (`... may not be set from the environment`), so whom a
daemon trusts and what it signs with (`network`, `[tls]`, keys, identities,
`rpc_overrides`, `ledger_auth`, stores, `audit_log`, `tracing.endpoint`, ...) stay in the
file. Each applied override is logged at start (variable and key, never the value).

{_env_allowed_table()}
"""


def render() -> str:
    """The whole reference, deterministically, from the models."""
    lines = [_INTRO]
    for name, model in FILE_MODELS.items():
        lines += _section(FILE_TITLES[name], model, "", 2)
        if name == "network":
            for kind_name in REGISTRY:
                table = get_kind(kind_name).table
                lines += _ledger_section(kind_name, table)
    return "\n".join(lines).rstrip("\n") + "\n"


def _ledger_section(kind_name: str, table: type[LedgerTable]) -> list[str]:
    notes = []
    if table.finality_depth_required:
        notes.append("`finality_depth` is required (probabilistic finality).")
    if table.address_keys:
        keys = ", ".join(f"`{k}`" for k in table.address_keys)
        notes.append(f"{keys}: a valid {kind_name} address (the kind's address codec).")
    return [
        f'### `[[ledgers]]` with `kind = "{kind_name}"`',
        "",
        _cell(table.__doc__ or ""),
        "",
        *([" ".join(notes), ""] if notes else []),
        *_rows(table),
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    """Write the reference, or with ``--check`` exit 1 when the committed one differs."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is stale: run python -m bridge.tools.gen_config_docs", file=sys.stderr)
            return 1
        print("configuration reference matches the models")
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
