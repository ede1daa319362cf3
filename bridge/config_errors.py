"""The one error a configuration file is refused with: every problem, each at its path.

Kept free of heavy imports so a daemon's entry point can catch and print it before anything
else is loaded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bridge.domain.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One refused setting: ``path`` is its dotted place in the file (``ledgers.fab.channel``,
    ``verifiers[1].member``; an environment override is named ``env KSTB_...``; '' when the
    problem concerns the whole file) and ``message`` what is wrong with it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(InvalidInput):
    """A configuration file (or an environment override of it) was refused.

    Guarantees: ``problems`` is non-empty and lists EVERY problem found in the pass that
    failed (structure and ranges first; cross-field rules once the structure is sound), in
    file order; ``file`` names the file. ``str()`` is ``file: path: message; ...``. A
    problem found by a later check (a file that cannot be read, a key file exposed) is
    chained as ``__cause__`` with its own type.
    """

    def __init__(self, file: str, problems: Iterable[ConfigProblem]) -> None:
        self.file = file
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        if not self.problems:
            raise ValueError("a ConfigError needs at least one problem")
        text = "; ".join(str(p) for p in self.problems)
        super().__init__(f"{file}: {text}" if file else text)
