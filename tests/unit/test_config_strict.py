"""Strict configuration (issue 12 item 1): every key of every file refused when misspelt,
out of range or of the wrong type, with its path; the cases are GENERATED from the schema
models (a new field is covered without touching this file)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, get_args, get_origin

import pytest
from pydantic import BaseModel

from bridge.config_errors import ConfigError, ConfigProblem
from bridge.config_rules import dotted, network_rules, validate
from bridge.config_schema import FILE_MODELS, NetworkFile
from bridge.ledgers.kinds import REGISTRY, get_kind
from bridge.tools.gen_config_docs import alternatives

pytestmark = [pytest.mark.unit, pytest.mark.ops]

PATTERN_SAMPLES = {
    r"^0x[0-9a-fA-F]{40}$": "0x" + "11" * 20,
    r"^[A-Z]{2}[A-Z0-9]{9}[0-9]$": "US0378331005",
    r"^[a-z0-9][a-z0-9-]{0,62}$": "org-a",
    r"^0x[0-9a-fA-F]{64}$": "0x" + "ab" * 32,
}
FORMAT_SAMPLES = {
    "_listen": "127.0.0.1:1",
    "_target": "127.0.0.1:2",
    "_optional_target": "127.0.0.1:3",
    "_targets": "127.0.0.1:2,127.0.0.1:5",
    "_metrics_listen": "127.0.0.1:4",
    "_http_url": "http://127.0.0.1:4318/v1/traces",
}


def _is_model(a: Any) -> bool:
    return isinstance(a, type) and issubclass(a, BaseModel)


def _pick(annotation: Any, metadata: list[Any]) -> tuple[Any, list[Any]]:
    """The alternative a sample uses: a table when there is one (more keys to cover)."""
    alts = [(b, m) for b, m in alternatives(annotation, metadata) if b is not type(None)]
    return next(((b, m) for b, m in alts if _is_model(b)), alts[0])


def sample(annotation: Any, metadata: list[Any] | None = None) -> Any:
    """A value valid for the annotation's shape and constraints."""
    base, meta = _pick(annotation, list(metadata or []))
    origin = get_origin(base)
    if _is_model(base):
        return full_sample(base)
    if origin is list:
        return [sample(get_args(base)[0])]
    if origin is dict:
        return {"name": sample(get_args(base)[1])}
    if base is bool:
        return True
    if origin is Literal:
        return get_args(base)[0]
    if base in (int, float):
        low = 1
        for m in meta:
            if getattr(m, "ge", None) is not None:
                low = m.ge
            if getattr(m, "gt", None) is not None:
                low = m.gt + 1
        return base(low)
    for m in meta:
        if getattr(m, "pattern", None):
            return PATTERN_SAMPLES[m.pattern]  # a new pattern needs a sample here
        func = getattr(m, "func", None) if type(m).__name__ == "AfterValidator" else None
        if func is not None:
            return FORMAT_SAMPLES[func.__name__]
    return "x"


def full_sample(model: type[BaseModel]) -> dict[str, Any]:
    """Every key of ``model`` (optional ones too) with a valid value: the field's first
    declared example when it has one (a kind's own patterns need no entry here), else one
    derived from its type and constraints."""
    return {
        name: f.examples[0] if f.examples else sample(f.annotation, f.metadata)
        for name, f in model.model_fields.items()
    }


def key_paths(
    model: type[BaseModel], data: dict[str, Any], loc: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], Any, list[Any]]]:
    """Every key of ``data`` (as sampled from ``model``): its location, annotation and
    constraints, recursing into tables, arrays of tables and tables by name."""
    for name, field in model.model_fields.items():
        here = (*loc, name)
        yield here, field.annotation, list(field.metadata)
        value = data[name]
        base, _ = _pick(field.annotation, list(field.metadata))
        origin = get_origin(base)
        if _is_model(base):
            yield from key_paths(base, value, here)
            continue
        inner = (
            get_args(base)[0] if origin is list else get_args(base)[1] if origin is dict else None
        )
        if inner is None:
            continue
        inner_base, _ = _pick(inner, [])
        if _is_model(inner_base):
            key: str | int = 0 if origin is list else "name"
            yield from key_paths(inner_base, value[key], (*here, key))


def _get(data: Any, loc: tuple[str | int, ...]) -> Any:
    for part in loc:
        data = data[part]
    return data


def _set(data: dict[str, Any], loc: tuple[str | int, ...], value: Any) -> None:
    _get(data, loc[:-1])[loc[-1]] = value


def _cases() -> Iterator[
    tuple[str, type[BaseModel], dict[str, Any], tuple[str | int, ...], Any, list[Any]]
]:
    for file, model in FILE_MODELS.items():
        data = full_sample(model)
        for loc, annotation, meta in key_paths(model, data):
            yield file, model, data, loc, annotation, meta
    for kind_name in REGISTRY:
        kind = get_kind(kind_name)
        data = full_sample(kind.table) | {"id": "lg-a", "kind": kind_name}
        codec = kind.address_codec()
        for key in kind.table.address_keys:
            data[key] = codec.format(bytes(12) + b"\x11" * 20)
        for loc, annotation, meta in key_paths(kind.table, data):
            yield f"ledger:{kind_name}", kind.table, data, loc, annotation, meta


CASES = list(_cases())
IDS = [f"{c[0]}:{dotted(c[3])}" for c in CASES]


def check(
    file: str, model: type[BaseModel], data: dict[str, Any]
) -> tuple[list[ConfigProblem], str]:
    """Problems of ``data`` as file ``file``, and the path prefix its keys are reported at."""
    if not file.startswith("ledger:"):
        return validate(model, data)[1], ""
    network = NetworkFile.model_validate(
        {
            "committee": {"epoch": 1, "threshold": 1, "members": ["0x" + "11" * 20]},
            "ledgers": [data],
        }
    )
    return network_rules(network)[1], "ledgers.lg-a"


@pytest.mark.parametrize("file", [*FILE_MODELS, *(f"ledger:{k}" for k in REGISTRY)])
def test_a_sample_with_every_key_is_valid(file: str) -> None:
    """The generator's baseline: every key present and valid, no problem."""
    model, data = next((c[1], c[2]) for c in CASES if c[0] == file)
    assert check(file, model, data)[0] == []


@pytest.mark.parametrize(("file", "model", "data", "loc", "annotation", "meta"), CASES, ids=IDS)
def test_every_misspelt_key_is_refused_with_its_path(
    file: str, model: Any, data: Any, loc: Any, annotation: Any, meta: Any
) -> None:
    import copy

    bad = copy.deepcopy(data)
    parent = _get(bad, loc[:-1])
    key = str(loc[-1])
    typo = key[:-1] + ("q" if key[-1] != "q" else "z")
    parent[typo] = parent.pop(key)
    problems, prefix = check(file, model, bad)
    if file.startswith("ledger:") and loc == ("kind",):
        # Without its kind an entry has no model: the missing kind is what is reported.
        assert problems == [ConfigProblem("ledgers.lg-a.kind", "missing required key")]
        return
    if file.startswith("ledger:") and loc == ("id",):
        prefix = "ledgers[0]"  # an entry without its id is named by its position
    wanted = dotted((*loc[:-1], typo), prefix)
    hits = [p for p in problems if p.path == wanted]
    assert hits and hits[0].message.startswith("unknown key"), problems
    if len(key) >= 5:  # long enough for a one-letter slip to be recognised
        assert f"did you mean {key!r}" in hits[0].message


_WRONG_TYPE = {str: 12, int: "12", float: "1.5", bool: "yes"}


@pytest.mark.parametrize(("file", "model", "data", "loc", "annotation", "meta"), CASES, ids=IDS)
def test_every_key_of_the_wrong_type_is_refused_with_its_path(
    file: str, model: Any, data: Any, loc: Any, annotation: Any, meta: Any
) -> None:
    import copy

    if file.startswith("ledger:") and loc[-1] in ("id", "kind"):
        pytest.skip("id and kind select the entry's path and model")
    base, _ = _pick(annotation, meta)
    origin = get_origin(base)
    if get_args(base) and origin is dict and get_args(base)[1] is Any:
        wrong: Any = 12
    elif origin in (list, dict) or _is_model(base):
        wrong = True  # neither an array nor a table
    else:
        wrong = _WRONG_TYPE.get(base, True)
    bad = copy.deepcopy(data)
    _set(bad, loc, wrong)
    problems, prefix = check(file, model, bad)
    path = dotted(loc, prefix)
    assert any(p.path == path or p.path.startswith(path + "[") for p in problems), problems


def _out_of_range(base: Any, meta: list[Any]) -> list[Any]:
    values: list[Any] = []
    for m in meta:
        if getattr(m, "gt", None) is not None:
            values.append(base(m.gt))
        if getattr(m, "ge", None) is not None:
            values.append(base(m.ge - (1 if base is int else 0.01)))
        if getattr(m, "lt", None) is not None:
            values.append(base(m.lt))
        if getattr(m, "le", None) is not None:
            values.append(base(m.le + (1 if base is int else 0.01)))
        if getattr(m, "min_length", None):
            values.append("")
        if getattr(m, "pattern", None):
            values.append("NOT VALID!")
        if getattr(m, "func", None) is not None:
            values.append("nonsense")
    return values


RANGE_CASES = [
    (*c[:4], value)
    for c in CASES
    for value in _out_of_range(*_pick(c[4], c[5]))
    if get_origin(_pick(c[4], c[5])[0]) not in (list, dict)
]


@pytest.mark.parametrize(
    ("file", "model", "data", "loc", "value"),
    RANGE_CASES,
    ids=[f"{c[0]}:{dotted(c[3])}={c[4]!r}" for c in RANGE_CASES],
)
def test_every_out_of_range_value_is_refused_with_its_path(
    file: str, model: Any, data: Any, loc: Any, value: Any
) -> None:
    import copy

    bad = copy.deepcopy(data)
    _set(bad, loc, value)
    problems, prefix = check(file, model, bad)
    assert [p.path for p in problems] == [dotted(loc, prefix)], problems


FLOAT_CASES = [c for c in CASES if _pick(c[4], c[5])[0] is float]


@pytest.mark.security
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize(
    ("file", "model", "data", "loc", "annotation", "meta"),
    FLOAT_CASES,
    ids=[f"{c[0]}:{dotted(c[3])}" for c in FLOAT_CASES],
)
def test_no_number_key_takes_inf_or_nan(
    file: str, model: Any, data: Any, loc: Any, annotation: Any, meta: Any, value: float
) -> None:
    """Review finding 6: TOML's ``inf``/``nan`` are refused at their path (``inf`` seconds
    overflowed at start or made a relayer that never polls); every number key has a
    finite upper bound too."""
    import copy

    bad = copy.deepcopy(data)
    _set(bad, loc, value)
    problems, prefix = check(file, model, bad)
    assert [p.path for p in problems] == [dotted(loc, prefix)], problems
    assert "finite number" in problems[0].message
    assert any(getattr(m, "le", None) is not None for m in meta), f"{loc} has no upper bound"


def test_the_generator_covers_the_shared_tables() -> None:
    """Sanity: the generated cases reach nested tables of every kind of container."""
    paths = set(IDS)
    for wanted in (
        "network:committee.later[0].member",
        "network:organisations[0].revoked_file",
        "coordinator:verifiers[0].member",
        "coordinator:metrics.probe_interval",
        "relayer:key.pin_env",
        "verifier:rpc_overrides.name.tls_server_name",
        "verifier:ledger_auth.name.token_file",
        "verifier:rotation.max_activation_lag",
        "client:tls.ca_files",
        "ledger:evm:finality_depth",
        "ledger:fabric:genesis_hash",
    ):
        assert wanted in paths


def test_config_error_lists_every_problem() -> None:
    err = ConfigError("f.toml", [ConfigProblem("a.b", "unknown key"), ConfigProblem("", "bad")])
    assert str(err) == "f.toml: a.b: unknown key; bad"
    assert isinstance(err, ConfigError) and len(err.problems) == 2
    with pytest.raises(ValueError, match="at least one problem"):
        ConfigError("f.toml", [])
