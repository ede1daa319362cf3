"""The committed Grafana dashboard and Prometheus alert rules name only metrics (and labels)
the daemons export, and are well-formed (issue 12 item 3).

promtool is not used (``go install .../promtool`` builds all of Prometheus); instead a
Python check: YAML/JSON structure, Prometheus durations, severities, balanced brackets,
quoted strings, known PromQL functions and aggregation keywords, every ``kstb_*`` name in
:func:`bridge.obs.catalogue.exported_metrics`, every label matcher and ``by``/``without``
label among the labels of the metrics the expression uses.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from bridge.obs.catalogue import exported_metrics

pytestmark = [pytest.mark.unit, pytest.mark.ops]

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "observability" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "observability" / "grafana-dashboard.json"

FUNCTIONS = {
    "rate", "irate", "increase", "changes", "delta", "deriv", "resets", "histogram_quantile",
    "abs", "clamp_min", "clamp_max", "absent", "absent_over_time", "max_over_time",
    "min_over_time", "avg_over_time", "time", "vector", "scalar", "label_replace",
}  # fmt: skip
AGGREGATIONS = {"sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "stddev"}
KEYWORDS = {"by", "without", "and", "or", "unless", "on", "ignoring", "group_left", "bool",
            "offset", "inf", "nan"}  # fmt: skip
TARGET_LABELS = {"instance", "job"}
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def _strip_strings(expr: str) -> str:
    out = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    assert out.count('"') % 2 == 0, f"unterminated string in {expr!r}"
    return out


def check_promql(expr: str, exported: dict[str, frozenset[str]]) -> set[str]:
    """Raise AssertionError when ``expr`` is implausible; return the metrics it uses."""
    assert expr.strip(), "empty expression"
    bare = _strip_strings(expr)
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for ch in bare:
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            assert stack and stack.pop() == pairs[ch], f"unbalanced {ch!r} in {expr!r}"
    assert not stack, f"unclosed {stack} in {expr!r}"
    for rng in re.findall(r"\[([^\]]*)\]", bare):
        assert DURATION.match(rng), f"bad range [{rng}] in {expr!r}"
    used: set[str] = set()
    labels: set[str] = set()
    # Selectors: name{matchers}
    for _name, matchers in re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", bare):
        for m in filter(None, (x.strip() for x in matchers.split(","))):
            key = re.match(r'^([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*""$', m)
            assert key, f"bad matcher {m!r} in {expr!r}"
            labels.add(key.group(1))
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", bare):
        labels |= {x.strip() for x in group.split(",") if x.strip()}
    no_selectors = re.sub(r"\{[^}]*\}", "", bare)
    no_groups = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", no_selectors)
    no_ranges = re.sub(r"\[[^\]]*\]", "", no_groups)
    for token in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", no_ranges):
        if token.startswith("kstb_"):
            assert token in exported, f"{token} is not exported by any daemon ({expr!r})"
            used.add(token)
        elif re.fullmatch(r"e\d*", token) or token.isdigit():
            continue  # 1e17
        else:
            assert token in FUNCTIONS | AGGREGATIONS | KEYWORDS, f"unknown {token!r} in {expr!r}"
    assert used, f"{expr!r} names no kstb metric"
    allowed = set().union(*(exported[m] for m in used)) | TARGET_LABELS
    assert labels <= allowed, f"labels {labels - allowed} not on {used} ({expr!r})"
    return used


@pytest.fixture(scope="module")
def exported() -> dict[str, frozenset[str]]:
    return exported_metrics()


def test_the_validator_refuses_what_promtool_would(exported: dict[str, frozenset[str]]) -> None:
    for bad in (
        "kstb_transfer_stuck > 0",  # misspelt metric
        "sum(kstb_transfers > 0",  # unbalanced
        "rate(kstb_member_refusals_total[5x])",  # bad duration
        'kstb_transfers{ledger="a"}',  # label the metric does not have
        "sum by (transfer_id) (kstb_transfers)",
        "ratte(kstb_member_refusals_total[5m])",  # unknown function
        'kstb_transfers{state="COMMITTED}',  # unterminated string
        "",
    ):
        with pytest.raises(AssertionError):
            check_promql(bad, exported)


def test_alert_rules_are_well_formed_and_name_exported_metrics(
    exported: dict[str, frozenset[str]],
) -> None:
    doc = yaml.safe_load(RULES.read_text())
    assert set(doc) == {"groups"}
    names: set[str] = set()
    covered: set[str] = set()
    for group in doc["groups"]:
        assert set(group) <= {"name", "rules", "interval"} and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["alert"] not in names, f"duplicate alert {rule['alert']}"
            names.add(rule["alert"])
            assert DURATION.match(str(rule.get("for", "0m"))), rule
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert rule["annotations"]["summary"]
            covered |= check_promql(str(rule["expr"]), exported)
    # The alerts the issue asks for exist.
    for needed in (
        "kstb_transfers_stuck", "kstb_relayer_lag_blocks", "kstb_supply_feed_age_seconds",
        "kstb_member_refusals_total", "kstb_transfers_halted", "kstb_relayer_gas_balance_wei",
    ):  # fmt: skip
        assert needed in covered, f"no alert on {needed}"


def test_dashboard_is_valid_and_every_panel_names_exported_metrics(
    exported: dict[str, frozenset[str]],
) -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["panels"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    shown: set[str] = set()
    for panel in dash["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            shown |= check_promql(target["expr"], exported)

    def family(name: str) -> str:
        return re.sub(r"_(bucket|count|sum)$", "", name)

    families = {family(n) for n in exported if not n.endswith("_created")}
    unshown = {"kstb_build_info", "kstb_relayer_events_delivered", "kstb_relayer_finalized_height"}
    missing = families - {family(s) for s in shown} - unshown
    assert not missing, f"exported but on no panel: {sorted(missing)}"


def test_operator_guide_lists_every_exported_metric(exported: dict[str, frozenset[str]]) -> None:
    guide = (ROOT / "docs" / "operators" / "observability.md").read_text()
    documented = set(re.findall(r"`(kstb_[a-z0-9_]+)`", guide))
    families = {
        re.sub(r"_(bucket|count|sum)$", "", n) for n in exported if not n.endswith("_created")
    }
    assert families == documented, (
        f"undocumented: {sorted(families - documented)}; gone: {sorted(documented - families)}"
    )
