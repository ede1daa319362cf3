"""Checking a configuration file: read, environment overrides, schema, cross-field rules.

Every check collects ALL its problems, each with its path, before raising one
:class:`~bridge.config_errors.ConfigError`: an operator fixes a file in one pass.

Environment overrides (one scheme, daemon files only): ``KSTB_<FILE>__<KEY>[__<SUBKEY>...]``
with ``<FILE>`` one of ``COORDINATOR``, ``RELAYER``, ``VERIFIER``, keys case-insensitive,
e.g. ``KSTB_RELAYER__POLL_INTERVAL=0.5`` or ``KSTB_VERIFIER__METRICS__LISTEN=0.0.0.0:9101``.
The value is read as a TOML value (``0.5``, ``true``, ``["a:1", "b:2"]``), else as a plain
string. An override naming an unknown key is refused like a misspelt key in the file.
SECURITY: only OPERATIONAL keys may be overridden (:data:`ENV_ALLOWED`: addresses to listen
on or dial, whose peers mTLS authenticates, intervals, timeouts, metrics, tracing switches).
Everything that decides whom a daemon trusts or what it signs with is refused with the
variable's name: the network file (the trust anchor), ``[tls]``, keys, identities, node
endpoints (``rpc_overrides``), ``ledger_auth``, stores, the audit log, the tracing
collector, rotation bounds. Every applied override is logged at start (variable and path,
never the value) and listed by ``bridge config check``.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import difflib
import os
import re
import tomllib
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from bridge.config_errors import ConfigError, ConfigProblem
from bridge.config_schema import (
    ENV_FILES,
    FILE_MODELS,
    CoordinatorFile,
    NetworkFile,
    RelayerFile,
    VerifierFile,
)
from bridge.domain.errors import InvalidInput
from bridge.domain.ids import LedgerId, is_valid_isin, parse_evm_address
from bridge.ledgers.kinds import LedgerTable, get_kind, table_problems
from bridge.logfields import get_logger

if TYPE_CHECKING:
    from bridge.config import NetworkConfig

M = TypeVar("M", bound=BaseModel)

ENV_PREFIX = "KSTB_"

_LOG_OVERRIDES: contextvars.ContextVar[bool] = contextvars.ContextVar("log_overrides", default=True)


@contextlib.contextmanager
def overrides_unlogged() -> Iterator[None]:
    """Within: :func:`check_file` does not log the overrides it applies (``bridge config
    check`` prints them itself, on stdout, where a log line would break ``--json``)."""
    token = _LOG_OVERRIDES.set(False)
    try:
        yield
    finally:
        _LOG_OVERRIDES.reset(token)


# ---- reading and the schema pass -----------------------------------------------------------


def read_toml(path: Path) -> dict[str, Any]:
    """The file's TOML; ConfigError (not OSError or a TOML error) when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(str(path), [ConfigProblem("", f"cannot read: {exc.strerror}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [ConfigProblem("", f"not valid TOML: {exc}")]) from None


def _flatten(annotations: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for a in annotations:
        origin = get_origin(a)
        if origin is Annotated:
            out += _flatten([get_args(a)[0]])
        elif origin is Union or isinstance(a, types.UnionType):
            out += _flatten(get_args(a))
        else:
            out.append(a)
    return out


def _is_model(a: Any) -> bool:
    return isinstance(a, type) and issubclass(a, BaseModel)


def known_keys(model: type[BaseModel], parts: Sequence[str | int]) -> list[str]:
    """The keys a table at ``parts`` inside ``model`` takes ([] where keys are free, e.g.
    a ledger id under ``relayers``, or where ``parts`` leads to no table)."""
    current: list[Any] = [model]
    for part in parts:
        if isinstance(part, str) and part.startswith("<"):
            continue  # a union's tag, not a key
        following: list[Any] = []
        for a in _flatten(current):
            if _is_model(a):
                if isinstance(part, str) and part in a.model_fields:
                    following.append(a.model_fields[part].annotation)
            elif get_origin(a) is list and isinstance(part, int):
                following.append(get_args(a)[0])
            elif get_origin(a) is dict and isinstance(part, str):
                following.append(get_args(a)[1])
        current = following
    return [key for a in _flatten(current) if _is_model(a) for key in a.model_fields]


def unknown_key(key: str, known: Iterable[str]) -> str:
    """``unknown key``, with the closest known key when one is close."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.7)
    return f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"


def dotted(loc: Sequence[str | int], prefix: str = "") -> str:
    """A pydantic location as a dotted path (``verifiers[1].member``); union tags dropped."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.startswith("<"):
            out += f".{part}" if out else part
    return out


_SHOULD = re.compile(r"^(Input|String|List|Value|Dictionary|Object|Tuple) should ")
_MESSAGES = {
    "missing": "missing required key",
    "list_type": "must be an array",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "union_tag_invalid": "must be a string or a table",
}


def schema_problems(
    exc: ValidationError, model: type[BaseModel], prefix: str = ""
) -> list[ConfigProblem]:
    """Each pydantic error as a problem at its path, in plain words."""
    problems = []
    for err in exc.errors():
        loc = err["loc"]
        kind = err["type"]
        if kind == "extra_forbidden":
            message = unknown_key(str(loc[-1]), known_keys(model, loc[:-1]))
        elif kind in _MESSAGES:
            message = _MESSAGES[kind]
        else:
            text = err["msg"].removeprefix("Value error, ")
            text = _SHOULD.sub("must ", text)
            message = text[:1].lower() + text[1:]
            value = err.get("input")
            if isinstance(value, int | float) and not isinstance(value, bool):
                message += f" (got {value!r})"
        problems.append(ConfigProblem(dotted(loc, prefix), message))
    return problems


def validate(
    model: type[M], raw: Mapping[str, Any], prefix: str = ""
) -> tuple[M | None, list[ConfigProblem]]:
    """``raw`` as ``model``, or None and every problem."""
    try:
        return model.model_validate(dict(raw)), []
    except ValidationError as exc:
        return None, schema_problems(exc, model, prefix)


# ---- environment overrides -----------------------------------------------------------------


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


_COMMON_ALLOWED = frozenset(
    {"listen", "metrics", "tracing.enabled", "tracing.sample_ratio", "tracing.service_name"}
)
ENV_ALLOWED: dict[str, frozenset[str]] = {
    "coordinator": _COMMON_ALLOWED
    | {"relayers", "verifiers", "transfer_ttl", "rpc_timeout", "supply_heartbeat"},
    "relayer": _COMMON_ALLOWED | {"coordinator", "poll_interval"},
    "verifier": _COMMON_ALLOWED,
}
"""Per daemon file, the key paths (and the tables whose every key) the environment may set.
SECURITY: an allowlist, so a key added later is refused until someone decides it is
operational; ``tracing.endpoint`` is not here (spans would leave for an attacker's host)."""

ENV_REFUSED = "may not be set from the environment (security-critical: set it in the file)"
"""The message of a refused override (its path is ``env <VARIABLE>``)."""


def env_allowed(file: str, parts: Sequence[str]) -> bool:
    """True when ``parts`` (a key path) of daemon file ``file`` may come from the environment:
    it is an allowed path or lies inside an allowed table."""
    allowed = ENV_ALLOWED.get(file, frozenset())
    return any(".".join(parts[:i]) in allowed for i in range(1, len(parts) + 1))


def apply_env(
    file: str, raw: Mapping[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, Any], list[ConfigProblem], dict[str, str]]:
    """``raw`` with the ``KSTB_<FILE>__...`` overrides of ``environ`` applied; the problems
    (unknown keys, overriding inside a value) and which variable set which path."""
    out: dict[str, Any] = copy.deepcopy(dict(raw))
    if file not in ENV_FILES:
        return out, [], {}
    model = FILE_MODELS[file]
    prefix = f"{ENV_PREFIX}{file.upper()}__"
    problems: list[ConfigProblem] = []
    sources: dict[str, str] = {}
    for var in sorted(environ):
        if not var.startswith(prefix):
            continue
        parts = [p.lower() for p in var[len(prefix) :].split("__")]
        where = f"env {var}"
        if not all(parts):
            problems.append(ConfigProblem(where, "empty key between '__' separators"))
            continue
        refused = False
        for i, part in enumerate(parts):
            known = known_keys(model, parts[:i])
            if known and part not in known:
                problems.append(ConfigProblem(where, f"{part!r}: {unknown_key(part, known)}"))
                refused = True
                break
        if not refused and not env_allowed(file, parts):
            problems.append(ConfigProblem(where, f"{'.'.join(parts)!r} {ENV_REFUSED}"))
            refused = True
        node: Any = out
        for part in parts[:-1]:
            if refused:
                break
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(ConfigProblem(where, f"{part!r} is a value, not a table"))
                refused = True
        if not refused:
            node[parts[-1]] = _env_value(environ[var])
            sources[".".join(parts)] = var
    return out, problems, sources


def _mark_env(problems: list[ConfigProblem], sources: Mapping[str, str]) -> list[ConfigProblem]:
    marked = []
    for p in problems:
        var = next(
            (v for path, v in sources.items() if p.path == path or p.path.startswith(path + ".")),
            None,
        )
        marked.append(ConfigProblem(p.path, f"{p.message} (set by {var})") if var else p)
    return marked


def check_file(
    file: str, path: Path, environ: Mapping[str, str] | None = None
) -> tuple[Any, dict[str, Any]]:
    """Read ``path`` as configuration file ``file`` (a key of FILE_MODELS), apply the
    environment's overrides and validate its shape: the model and the (overridden) raw
    table; ConfigError with every problem otherwise."""
    raw = read_toml(path)
    merged, problems, sources = apply_env(file, raw, os.environ if environ is None else environ)
    model, schema = validate(FILE_MODELS[file], merged)
    problems += _mark_env(schema, sources)
    if problems:
        raise ConfigError(str(path), problems)
    for key, var in sources.items() if _LOG_OVERRIDES.get() else ():
        # SECURITY: the variable and the path, never the value (it may be an address
        # an operator keeps private; secrets cannot be overridden at all).
        get_logger().info(
            "configuration overridden by environment", file=str(path), key=key, variable=var
        )
    return model, merged


# ---- cross-field rules ---------------------------------------------------------------------


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def network_rules(
    model: NetworkFile,
) -> tuple[list[tuple[LedgerTable, Mapping[str, Any]]], list[ConfigProblem]]:
    """The network file's rules: committee quorum (0 < t <= n, 2t > n, distinct members),
    later members distinct, EIP-55 checksums of member, operator and instruction-key
    addresses, ISINs valid and distinct, each ``[[ledgers]]`` entry valid for its kind
    (model and kind rules) with a well-formed id, ledger ids distinct, instruction keys for
    known ledgers. Returns each ledger's validated table with its raw entry."""
    problems: list[ConfigProblem] = []
    c = model.committee
    n, t = len(c.members), c.threshold
    if t > n:
        problems.append(
            ConfigProblem("committee.threshold", f"threshold {t} exceeds the {n} members")
        )
    elif 2 * t <= n:
        problems.append(
            ConfigProblem("committee.threshold", f"threshold must exceed n/2 (t={t}, n={n})")
        )
    problems += _checksums("committee.members", c.members)
    problems += _checksums("committee.later", [later.member for later in c.later], ".member")
    problems += _checksums("supply.operators", model.supply.operators)
    for ledger, keys in model.instruction_keys.items():
        problems += _checksums(f"instruction_keys.{ledger}", keys)
    seen: set[str] = set()
    for i, m in enumerate(c.members):
        if m.lower() in seen:
            problems.append(ConfigProblem(f"committee.members[{i}]", f"{m} is listed twice"))
        seen.add(m.lower())
    for i, later in enumerate(c.later):
        if later.member.lower() in seen:
            problems.append(
                ConfigProblem(f"committee.later[{i}].member", f"{later.member} is listed twice")
            )
        seen.add(later.member.lower())
    isins: set[str] = set()
    for i, isin in enumerate(model.securities.isins):
        if not is_valid_isin(isin):
            problems.append(
                ConfigProblem(f"securities.isins[{i}]", f"{isin!r} is not a valid ISIN")
            )
        elif isin in isins:
            problems.append(ConfigProblem(f"securities.isins[{i}]", f"{isin} is listed twice"))
        isins.add(isin)
    tables: list[tuple[LedgerTable, Mapping[str, Any]]] = []
    ids: set[str] = set()
    for n_, entry in enumerate(model.ledgers):
        name = entry.get("id")
        where = f"ledgers.{name}" if isinstance(name, str) else f"ledgers[{n_}]"
        kind_name = entry.get("kind")
        if not isinstance(kind_name, str):
            problems.append(ConfigProblem(f"{where}.kind", "missing required key"))
            continue
        try:
            kind = get_kind(kind_name)
        except InvalidInput as exc:
            problems.append(ConfigProblem(f"{where}.kind", str(exc)))
            continue
        table, bad = validate(kind.table, entry, where)
        problems += bad
        if table is None:
            continue
        try:
            LedgerId(table.id)
        except InvalidInput as exc:
            problems.append(ConfigProblem(f"{where}.id", str(exc)))
        problems += [
            ConfigProblem(f"{where}.{k}", m) for k, m in table_problems(kind, table, entry)
        ]
        if table.id in ids:
            problems.append(ConfigProblem(f"{where}.id", f"ledger {table.id} configured twice"))
        ids.add(table.id)
        tables.append((table, entry))
    for ledger in model.instruction_keys:
        if ledger not in ids:
            problems.append(
                ConfigProblem(
                    f"instruction_keys.{ledger}", "unknown ledger" + _did_you_mean(ledger, ids)
                )
            )
    return tables, problems


def _checksums(path: str, addresses: Sequence[str], suffix: str = "") -> list[ConfigProblem]:
    """A problem for each address whose mixed case is not its EIP-55 checksum."""
    problems = []
    for i, address in enumerate(addresses):
        try:
            parse_evm_address(address)
        except InvalidInput as exc:
            problems.append(ConfigProblem(f"{path}[{i}]{suffix}", str(exc)))
    return problems


def _listen_clash(listen: str, metrics: str) -> list[ConfigProblem]:
    if metrics and metrics == listen:
        return [ConfigProblem("metrics.listen", f"{metrics} is also the gRPC listen address")]
    return []


def _ledger_keyed(
    table: Mapping[str, Any], name: str, network: NetworkConfig
) -> list[ConfigProblem]:
    return [
        ConfigProblem(f"{name}.{ledger}", "unknown ledger" + _did_you_mean(ledger, network.ledgers))
        for ledger in table
        if ledger not in network.ledgers
    ]


def coordinator_rules(model: CoordinatorFile, network: NetworkConfig) -> list[ConfigProblem]:
    """Every ledger has exactly one relayer and every relayer a ledger; verifier endpoints
    and named members distinct and committee members; enough genesis members reachable for
    a quorum (t <= reachable members) unless members of later epochs are reachable; with
    ``[tls]`` each endpoint names its member; a day's batch quota holds a full batch."""
    problems = [
        ConfigProblem(f"relayers.{name}", f"relayer for unknown ledger {name!r}")
        for name in model.relayers
        if name not in network.ledgers
    ]
    problems += [
        ConfigProblem(f"relayers.{name}", f"no relayer configured for ledger {name!r}")
        for name in network.ledgers
        if name not in model.relayers
    ]
    genesis = {"0x" + m.hex() for m in network.committee.members}
    later = {"0x" + m.hex() for m in network.later_members}
    endpoints: set[str] = set()
    named: set[str] = set()
    unnamed = 0
    for i, item in enumerate(model.verifiers):
        endpoint = item if isinstance(item, str) else item.endpoint
        if endpoint in endpoints:
            problems.append(
                ConfigProblem(f"verifiers[{i}]", f"endpoint {endpoint} is listed twice")
            )
        endpoints.add(endpoint)
        if isinstance(item, str):
            unnamed += 1
            if model.tls is not None:
                problems.append(
                    ConfigProblem(
                        f"verifiers[{i}]",
                        "with [tls], each entry must name its member ({endpoint, member})",
                    )
                )
            continue
        member = item.member.lower()
        problems += [
            ConfigProblem(f"verifiers[{i}].member", p.message)
            for p in _checksums("", [item.member])
        ]
        if member not in genesis and member not in later:
            problems.append(
                ConfigProblem(f"verifiers[{i}].member", f"{item.member} is not a committee member")
            )
        elif member in named:
            problems.append(
                ConfigProblem(f"verifiers[{i}].member", f"{item.member} is listed twice")
            )
        named.add(member)
    t, n = network.committee.threshold, len(network.committee.members)
    reachable = min(n, len(named & genesis) + unnamed)
    # With members of later epochs reachable the live epoch may be a later one, whose
    # threshold is on the ledgers, not in the file: the genesis rule then does not apply.
    rotated = bool(named & later) or any(network.later_members.values())
    if reachable < t and not rotated:
        problems.append(
            ConfigProblem(
                "verifiers",
                f"quorum unreachable: {reachable} of the {n} genesis members have an endpoint,"
                f" {t} must sign",
            )
        )
    if model.max_batch_items_per_day < model.max_batch_items:
        problems.append(
            ConfigProblem(
                "max_batch_items_per_day",
                f"{model.max_batch_items_per_day} is below max_batch_items"
                f" ({model.max_batch_items}): a full batch could never be submitted",
            )
        )
    return problems + _listen_clash(model.listen, model.metrics.listen)


def relayer_rules(model: RelayerFile, network: NetworkConfig) -> list[ConfigProblem]:
    """The ledger is configured; an MSP identity (``cert_file`` + ``msp_id``) is given
    exactly when the ledger's kind has identities."""
    if model.ledger not in network.ledgers:
        return [
            ConfigProblem(
                "ledger",
                f"relayer for unknown ledger {model.ledger!r}"
                + _did_you_mean(model.ledger, network.ledgers),
            )
        ]
    problems = []
    kind = get_kind(network.ledger(model.ledger).kind)
    for key, value in (("cert_file", model.cert_file), ("msp_id", model.msp_id)):
        if kind.reads_with_identity and not value:
            problems.append(
                ConfigProblem(key, f"missing required key (kind {kind.name} needs an MSP identity)")
            )
        if not kind.reads_with_identity and value:
            problems.append(ConfigProblem(key, f"kind {kind.name} takes no MSP identity"))
    return problems + _listen_clash(model.listen, model.metrics.listen)


def verifier_rules(model: VerifierFile, network: NetworkConfig) -> list[ConfigProblem]:
    """Per-ledger tables name configured ledgers; ``identities`` and the older
    ``fabric_identities`` are exclusive; ``rotation.min_overlap <= rotation.max_overlap``
    (each identity's keys are checked by its ledger's kind when the file is built)."""
    problems = _ledger_keyed(model.rpc_overrides, "rpc_overrides", network)
    problems += _ledger_keyed(model.ledger_auth, "ledger_auth", network)
    name = "identities"
    identities = model.identities
    if model.fabric_identities is not None:
        if model.identities:
            problems.append(
                ConfigProblem("fabric_identities", "identities and fabric_identities are exclusive")
            )
        name, identities = "fabric_identities", model.fabric_identities
    problems += _ledger_keyed(identities, name, network)
    if model.rotation.min_overlap > model.rotation.max_overlap:
        problems.append(ConfigProblem("rotation.min_overlap", "must not exceed max_overlap"))
    return problems + _listen_clash(model.listen, model.metrics.listen)


def refuse(file: str, problems: list[ConfigProblem]) -> None:
    """Raise ConfigError when ``problems`` is not empty."""
    if problems:
        raise ConfigError(file, problems)
