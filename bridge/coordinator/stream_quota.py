"""Open server streams per caller, bounded (a slow or hostile client cannot hold the
coordinator's tasks and store reads without limit).

A caller is its organisation and role (whatever number of certificates it holds), as the
authorisation interceptor established it, never anything the request says.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from bridge.domain.errors import ResourceExhausted

__all__ = ["StreamQuota"]


class StreamQuota:
    """At most ``limit`` open streams of one kind per caller.

    Guarantees: :meth:`hold` admits a stream only while the caller holds fewer than
    ``limit``, and gives the slot back when the stream ends however it ends (finished,
    cancelled, failed); the refusal is ``ResourceExhausted`` naming the setting, so the
    client knows it may retry once one of its streams has ended.
    """

    def __init__(self, stream: str, setting: str, limit: int) -> None:
        if limit <= 0:
            raise ValueError(f"{setting} must be positive")
        self._stream = stream
        self._setting = setting
        self.limit = limit
        self._open: dict[tuple[str, str], int] = {}

    def held(self, caller: tuple[str, str]) -> int:
        """How many streams ``caller`` holds open now."""
        return self._open.get(caller, 0)

    @contextlib.contextmanager
    def hold(self, caller: tuple[str, str]) -> Iterator[None]:
        """One slot for the duration of the block, or ResourceExhausted at once."""
        # SECURITY: checked and taken with no await in between (one event loop), so
        # concurrent opens cannot both pass the check.
        if self._open.get(caller, 0) >= self.limit:
            raise ResourceExhausted(
                f"{caller[0]} already holds {self.limit} {self._stream} streams"
                f" ({self._setting}); retry when one has ended"
            )
        self._open[caller] = self._open.get(caller, 0) + 1
        try:
            yield
        finally:
            left = self._open[caller] - 1
            if left:
                self._open[caller] = left
            else:
                del self._open[caller]
