"""Latency tables on disk: one JSON file per runtime, runtime version, CPU model and threads.

Timing a fused group means converting it (a quarter of a second) and running it; a search asks
for the same groups again and again, across calls and sessions. So every group time is appended
to a table file as soon as it is measured, and read back before anything is timed. A table holds
only times that are comparable: the file name carries the runtime ("litert-int8", "litert"),
the ai-edge-litert version, the CPU model and the thread count. Entries are group times with
the runtime's per-call overhead already subtracted (the overhead is stored once, per table).

A table can also come from the target device: kopt/runtime/time_bundle.py times a bundle of
group files there and writes a JSON (DEVICE_FORMAT) that `from_device_json` turns into a table with
the same keys. Such a table cannot grow on the host: what it lacks raises LatencyTableError.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from kopt.errors import LatencyTableError
from kopt.runtime.time_bundle import (  # the device's script keys its tables the same way
    DEVICE_FORMAT,
    cpu_model,
    litert_version,
)

log = logging.getLogger(__name__)

FORMAT = "kopt-latency-table/2"  # JSON lines: a header, then one line per entry
OLD_FORMAT = "kopt-latency-table/1"  # one JSON object, rewritten at every entry: read, moved
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
            f"{_slug(meta['cpu'])}.jsonl")
    return folder / name


@dataclass
class LatencyTable:
    """Group times (ms, per-call overhead subtracted) by group key, and that overhead.

    On disk, a JSON-lines file: a header line (format, meta), then one line per entry or
    overhead, appended as it is measured; the last line for a key wins. Appending costs the
    same at the 5000th entry as at the first (rewriting one JSON object took 0.11 s per entry
    at 5400 entries, as long as timing the entry), and processes sharing a table append
    side by side without losing each other's lines (one write per line, O_APPEND)."""

    meta: dict
    entries: dict[str, dict] = field(default_factory=dict)
    overhead_ms: float | None = None
    path: Path | None = None  # None: not written anywhere (a device table, or in memory)
    source: str = "host"  # "host": measured here and may grow; "device": read-only

    @classmethod
    def open(cls, runtime: str, threads: int, cache_dir: str | os.PathLike | None = None
             ) -> LatencyTable:
        """This machine's table for runtime/threads, read from the cache if it exists (a
        table kopt wrote in the old one-object format is moved to the new file once)."""
        meta = table_meta(runtime, threads)
        path = table_path(meta, cache_dir)
        table = cls(meta=meta, path=path)
        if path.exists():
            table._read_lines()
        elif path.with_suffix(".json").exists():
            table._move_old(path.with_suffix(".json"))
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
        """Record one group's time and append it to the file at once (a killed search loses
        nothing it measured)."""
        self.entries[key] = {"ms": float(ms), "desc": desc, **({"error": error} if error else {})}
        self._append([{"key": key, **self.entries[key]}])

    def set_overhead(self, ms: float) -> None:
        self.overhead_ms = float(ms)
        self._append([{"overhead_ms": self.overhead_ms}])

    def _append(self, records: list[dict]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(r) for r in records]
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size == 0:
                lines.insert(0, json.dumps({"format": FORMAT, "meta": self.meta}))
            os.write(fd, ("\n".join(lines) + "\n").encode())
        finally:
            os.close(fd)

    def _read_lines(self) -> None:
        """Entries and overhead from the file; a line cut short by a killed writer is skipped."""
        try:
            lines = self.path.read_text().splitlines()
        except OSError as err:
            raise LatencyTableError(f"cannot read latency table {self.path}: {err}") from err
        try:
            header = json.loads(lines[0]) if lines else {}
        except ValueError:
            header = {}
        if header.get("format") != FORMAT:
            raise LatencyTableError(f"{self.path} is not a {FORMAT} file (first line: "
                                    f"{lines[0][:80] if lines else 'none'!r})")
        for line in lines[1:]:
            try:
                record = json.loads(line)
            except ValueError:
                log.warning("latency table %s: skipped a broken line", self.path)
                continue
            if "key" in record:
                self.entries[record.pop("key")] = record
            elif "overhead_ms" in record:
                self.overhead_ms = float(record["overhead_ms"])

    def _move_old(self, old: Path) -> None:
        """Read a table of the old format and write its entries to this table's file."""
        data = _read(old, OLD_FORMAT)
        self.entries.update(data.get("entries", {}))
        records = [{"key": k, **e} for k, e in self.entries.items()]
        if data.get("overhead_ms") is not None:
            self.overhead_ms = float(data["overhead_ms"])
            records.append({"overhead_ms": self.overhead_ms})
        self._append(records)
        log.info("latency table %s moved to %s", old, self.path)

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
