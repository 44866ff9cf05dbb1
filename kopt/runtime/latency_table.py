"""Latency tables on disk: one JSON file per runtime, runtime version, CPU model and threads.

Timing a fused group means converting it (about a second) and running it; a search asks for
the same groups again and again, across calls and sessions. So every group time is written to
a table file as soon as it is measured, and read back before anything is timed. A table holds
only times that are comparable: the file name carries the runtime ("litert-int8", "litert"),
the ai-edge-litert version, the CPU model and the thread count. Entries are group times with
the runtime's per-call overhead already subtracted (the overhead is stored once, per table).

A table can also come from the target device: kopt/runtime/time_bundle.py times a bundle of
group files there and writes a JSON (DEVICE_FORMAT) that `from_device_json` turns into a table with
the same keys. Such a table cannot grow on the host: what it lacks raises LatencyTableError.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from kopt.errors import LatencyTableError
from kopt.runtime.time_bundle import (  # the device's script keys its tables the same way
    DEVICE_FORMAT,
    cpu_model,
    litert_version,
)

FORMAT = "kopt-latency-table/1"
CACHE_ENV = "KOPT_CACHE_DIR"  # kopt's cache root; latency tables go in its "latency" folder


def default_cache_dir() -> Path:
    """$KOPT_CACHE_DIR/latency, else ~/.cache/kopt/latency."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "kopt") / "latency"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:60] or "unknown"


def table_meta(runtime: str, threads: int) -> dict:
    return {"runtime": runtime, "threads": int(threads), "litert": litert_version(),
            "cpu": cpu_model()}


def table_path(meta: dict, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the table with this runtime, version, CPU and thread count lives."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = (f"{meta['runtime']}_t{meta['threads']}_litert-{_slug(meta['litert'])}_"
            f"{_slug(meta['cpu'])}.json")
    return folder / name


@dataclass
class LatencyTable:
    """Group times (ms, per-call overhead subtracted) by group key, and that overhead."""

    meta: dict
    entries: dict[str, dict] = field(default_factory=dict)
    overhead_ms: float | None = None
    path: Path | None = None  # None: not written anywhere (a device table, or in memory)
    source: str = "host"  # "host": measured here and may grow; "device": read-only

    @classmethod
    def open(cls, runtime: str, threads: int, cache_dir: str | os.PathLike | None = None
             ) -> LatencyTable:
        """This machine's table for runtime/threads, read from the cache if it exists."""
        meta = table_meta(runtime, threads)
        path = table_path(meta, cache_dir)
        table = cls(meta=meta, path=path)
        if path.exists():
            table._merge(_read(path, FORMAT))
        return table

    @classmethod
    def from_device_json(cls, path: str | os.PathLike) -> LatencyTable:
        """The table kopt/runtime/time_bundle.py wrote on a device: its raw medians less its own
        per-call overhead, so its entries mean what a host table's entries mean."""
        data = _read(Path(path), DEVICE_FORMAT)
        overhead = float(data["overhead_ms"])
        entries = {k: {"ms": max(0.0, float(e["ms"]) - overhead), "desc": e.get("desc", {})}
                   for k, e in data["entries"].items()}
        return cls(meta=dict(data["meta"]), entries=entries, overhead_ms=overhead,
                   source="device")

    def get(self, key: str) -> float | None:
        entry = self.entries.get(key)
        return None if entry is None else float(entry["ms"])

    def put(self, key: str, ms: float, desc: dict, error: str | None = None) -> None:
        """Record one group's time and write the table at once (a killed search loses
        nothing it measured)."""
        self.entries[key] = {"ms": float(ms), "desc": desc, **({"error": error} if error else {})}
        self.save()

    def set_overhead(self, ms: float) -> None:
        self.overhead_ms = float(ms)
        self.save()

    def save(self) -> None:
        """Write the table, merged with what another process may have written meanwhile (its
        entries are kept; ours win on the same key), through a temporary file and a rename."""
        if self.path is None:
            return
        if self.path.exists():
            try:
                disk = _read(self.path, FORMAT)
            except LatencyTableError:
                disk = None
            if disk is not None:
                mine = dict(self.entries)
                self.entries = {**disk.get("entries", {}), **mine}
                if self.overhead_ms is None:
                    self.overhead_ms = disk.get("overhead_ms")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, "meta": self.meta, "overhead_ms": self.overhead_ms,
                "entries": self.entries}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=0)
        os.replace(tmp, self.path)

    def _merge(self, data: dict) -> None:
        self.entries.update(data.get("entries", {}))
        if data.get("overhead_ms") is not None:
            self.overhead_ms = float(data["overhead_ms"])

    def __len__(self) -> int:
        return len(self.entries)


def _read(path: Path, fmt: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise LatencyTableError(f"cannot read latency table {path}: {err}") from err
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise LatencyTableError(f"{path} is not a {fmt} file (format "
                                f"{data.get('format') if isinstance(data, dict) else None!r})")
    return data
