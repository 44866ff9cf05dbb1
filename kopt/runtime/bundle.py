"""A bundle of .tflite files for timing on the target device, where kopt cannot run.

A Raspberry Pi or a phone's Python has ai-edge-litert and numpy but no TensorFlow, so the host
converts every fused group a latency table needs (and, to check predictions, the whole models)
and writes them with a manifest: the group keys the host will look up, the runtime and thread
count asked for, and what each file is. kopt/runtime/time_bundle.py, which imports nothing
from kopt, times each file on the device and writes the JSON that
`LatencyModel.from_device_json` reads. The script is installed with kopt and copied into every
bundle, so the bundle is all the device needs.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "kopt-latency-bundle/1"
SCRIPT = Path(__file__).with_name("time_bundle.py")  # installed with kopt, not in tools/


def write_bundle(path: str | os.PathLike, meta: dict, overhead: bytes,
                 groups: dict[str, tuple[bytes, dict]], models: dict[str, bytes]) -> Path:
    """Write `overhead` (the trivial model's file), each group's file (key -> (file bytes,
    description)) and each whole model's file into a folder, or a .zip when `path` ends so."""
    files: dict[str, bytes] = {"overhead.tflite": overhead}
    manifest: dict[str, Any] = {"format": MANIFEST_FORMAT, **meta, "overhead": "overhead.tflite",
                                "groups": [], "models": []}
    for i, (key, (flat, desc)) in enumerate(groups.items()):
        name = f"group_{i:04d}.tflite"
        files[name] = flat
        manifest["groups"].append({"file": name, "key": key, "desc": desc})
    for i, (model_name, flat) in enumerate(models.items()):
        name = f"model_{i:03d}.tflite"
        files[name] = flat
        manifest["models"].append({"file": name, "name": model_name})
    files[MANIFEST] = json.dumps(manifest, indent=1).encode()
    files[SCRIPT.name] = SCRIPT.read_bytes()
    path = Path(path)
    if path.suffix == ".zip":
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in files.items():
                z.writestr(name, data)
        return path
    if (path / MANIFEST).exists():  # an earlier bundle: its group files would be stale
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path
