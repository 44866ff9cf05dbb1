"""Progress bars for long loops, only when the caller asks (the CLI and tools do)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator, TypeVar

T = TypeVar("T")


def bar(items: Iterable[T], enabled: bool = False, desc: str = "", total: int | None = None
        ) -> Iterable[T]:
    """`items` wrapped in a tqdm bar when enabled, else unchanged, so library code stays quiet."""
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, leave=False)


def say(message: str, enabled: bool = False) -> None:
    """Print a result line above any open bar (to stderr) when progress is enabled."""
    if enabled:
        import sys

        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)


class GoalBar:
    """A bar towards a goal in any units (ms to cut, say), with where the work stands and what
    it is doing now after it. Without a tqdm bar (progress off) every call does nothing, so
    callers need no `if progress`."""

    def __init__(self, bar: Any = None):
        self._bar = bar
        self._status = ""

    def show(self, done: float | None = None, status: str | None = None) -> None:
        """Set how much is done (clamped to 0..total: the work may move back, or overshoot,
        and tqdm drops the bar once its count passes the total) and where the work stands."""
        if self._bar is None:
            return
        if done is not None:
            self._bar.n = min(max(done, 0.0), self._bar.total or 0.0)
        if status is not None:
            self._status = status
        self.doing("")

    def doing(self, activity: str) -> None:
        """What the work is busy with now ("fine-tuning 2/3"), shown after the status."""
        if self._bar is not None:
            self._bar.set_postfix_str(": ".join(s for s in (self._status, activity) if s))


@contextmanager
def progress_to(total: float, enabled: bool = False, desc: str = "") -> Iterator[GoalBar]:
    """A GoalBar towards `total` when enabled (to stderr, closed on exit, errors included),
    else one that does nothing, so library code stays quiet."""
    if not enabled:
        yield GoalBar()
        return
    import sys

    from tqdm import tqdm

    bar = tqdm(total=max(total, 0.0), desc=desc, file=sys.stderr, leave=False,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}{postfix}]")
    try:
        yield GoalBar(bar)
    finally:
        bar.close()
