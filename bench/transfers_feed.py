"""The supply feed during a benchmark load, counted from the processes' JSON log lines.

The depository's feed (ADR 0006) runs beside the transfers: the coordinator proposes a
record for each touched security and every member re-reads the ledgers and signs or
refuses it. A busy ledger can make members refuse (a Fabric cut they cannot read), and each
refused round costs every member and relayer its reads. The benchmark reports, for the
load's window, the records the coordinator published, the publications it gave up, and per
member the records it signed and the proposals it refused by reason. The counts come from
the structlog ``event`` (and ``method``, ``reason``) fields of ``coordinator.log`` and
``verifier-<i>.log``, the lines an operator would read; nothing is parsed out of a message.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PUBLISHED = "supply record published"
GAVE_UP = "supply record not produced; retried on the next change or heartbeat"
SIGNED = "supply record signed"
REFUSED = "request refused"


@dataclass(frozen=True)
class FeedCounts:
    """Feed log lines counted so far: the coordinator's published and given-up records,
    each member's signed records and its refused supply proposals by reason."""

    published: int = 0
    gave_up: int = 0
    signed: dict[str, int] = field(default_factory=dict)
    refused: dict[str, dict[str, int]] = field(default_factory=dict)


def _events(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path`` that mention the supply feed (others are skipped unread)."""
    if not path.exists():
        return []
    out = []
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if "supply" not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                out.append(entry)
    return out


def read_feed_counts(logs: Path) -> FeedCounts:
    """Count the feed's lines in ``logs`` (the devnet's ``<workdir>/logs``)."""
    coordinator = Counter(e.get("event") for e in _events(logs / "coordinator.log"))
    signed: dict[str, int] = {}
    refused: dict[str, dict[str, int]] = {}
    for path in sorted(logs.glob("verifier-*.log")):
        member = path.stem
        events = _events(path)
        signed[member] = sum(e.get("event") == SIGNED for e in events)
        refused[member] = dict(
            Counter(
                str(e.get("reason", ""))
                for e in events
                if e.get("event") == REFUSED and e.get("method") == "supply"
            )
        )
    return FeedCounts(coordinator[PUBLISHED], coordinator[GAVE_UP], signed, refused)


def feed_delta(before: FeedCounts, after: FeedCounts) -> dict[str, Any]:
    """What was logged between two counts, as the JSON the report keeps (``supply_feed``)."""
    refused = {
        member: {
            reason: n - before.refused.get(member, {}).get(reason, 0)
            for reason, n in reasons.items()
            if n - before.refused.get(member, {}).get(reason, 0)
        }
        for member, reasons in after.refused.items()
    }
    return {
        "published": after.published - before.published,
        "gave_up": after.gave_up - before.gave_up,
        "signed": {m: n - before.signed.get(m, 0) for m, n in after.signed.items()},
        "refused": refused,
    }


def feed_lines(feed: dict[str, Any]) -> list[str]:
    """The report's supply-feed line: records, give-ups, and each member's answers."""
    members = ", ".join(
        f"{m} signed {feed['signed'][m]} refused {sum(feed['refused'].get(m, {}).values())}"
        for m in sorted(feed["signed"])
    )
    reasons: Counter[str] = Counter()
    for by_reason in feed["refused"].values():
        reasons.update(by_reason)
    why = f" ({', '.join(f'{r} {n}' for r, n in reasons.most_common())})" if reasons else ""
    return [
        f"supply feed during the load: {feed['published']} records published,"
        f" {feed['gave_up']} publications given up; {members}{why}"
    ]
