"""Run kopt's int8 .tflite files on emulated aarch64 CPUs (qemu-user + LiteRT/XNNPACK) and
compare their outputs with the x86 run: bit-exact, within one quantisation step, or different.

    apt-get install -y qemu-user-static mmdebstrap          # once, as root
    python tools/arm_check.py --setup                       # aarch64 rootfs + wheels, once
    python tools/arm_check.py --examples --json arm.json    # the example models, all CPUs
    python tools/arm_check.py model.tflite --cpus cortex-a53 neoverse-n1

Why emulation: the int8 files are meant for Raspberry Pi 3/4/5 (Cortex-A53/A72/A76) and AWS
Graviton2 (Neoverse-N1), where XNNPACK picks other microkernels than on x86 (NEON, dot-product,
i8mm...). qemu-user runs the aarch64 LiteRT wheel with the CPU model's feature set, so each
kernel family those cores would select really runs. It is slow (up to 30 s per model per CPU,
mostly starting Python and LiteRT under qemu; up to ~0.4 s per emulated inference), so this is
a benchmark-style check, not a unit test; tests/test_arm_check.py tests only its pure parts.

What it does: each model runs on x86 with kopt.runtime.LiteRTRunner (XNNPACK, 1 thread) on
seeded raw inputs (saved to .npz); then a small runner script (ai_edge_litert + numpy only)
runs the same inputs under `qemu-aarch64-static -cpu CPU -L ROOT` for each CPU; the raw int8
outputs are compared in quantisation steps (float outputs: relative error). The verdict per
model per CPU is "bit-exact", "within 1 step" or "DIFFERENT: max N steps".

Why the per-CPU ROOT: XNNPACK's CPU detection (the cpuinfo library) counts processors in
/proc/cpuinfo and /sys/devices/system/cpu; qemu-user (7.2) passes those through from the x86
host, where it finds no ARM processor and LiteRT dies with SIGSEGV. qemu looks every absolute
path the guest opens up under -L ROOT first, so each CPU gets a small ROOT with an ARM
/proc/cpuinfo (its MIDR, and a Features line read from the guest's own AT_HWCAP) and
/sys/devices/system/cpu, and symlinks to one shared Debian bookworm arm64 rootfs. The
instruction-set features XNNPACK uses come from AT_HWCAP/AT_HWCAP2 (getauxval), which qemu
sets from -cpu: the Features line does not change them (--cpuinfo-drop shows it).

`-cpu max` has SME, and XNNPACK's int8 GEMMs then run KleidiAI SME kernels built on SMOPA,
which qemu before 9.0 / 8.2.3 computes wrongly (qemu issue 2083): with Debian bookworm's qemu
7.2 its outputs differ by tens of steps, an emulation fault flagged in the report and left out
of the exit status. docs/arm.md has the evidence; `--qemu` runs a newer qemu binary.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_DIR = os.environ.get("KOPT_ARM_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kopt-arm")
APT_HINT = "apt-get update && apt-get install -y qemu-user-static mmdebstrap"
QEMU = os.environ.get("KOPT_ARM_QEMU", "qemu-aarch64-static")  # or --qemu
SUITE = "bookworm"  # its python3.11 matches the cp311 aarch64 wheels
GUEST_PYTHON = "/usr/bin/python3.11"
ROOTFS_PACKAGES = "python3.11-minimal,libpython3.11-stdlib,libstdc++6,libgcc-s1,zlib1g"
WHEEL_PLATFORM = "manylinux_2_27_aarch64"
N_CORES = 4  # the emulated machine's processor count (a Raspberry Pi has 4)


@dataclass(frozen=True)
class Cpu:
    """A qemu -cpu model and the MIDR fields the /proc/cpuinfo we write for it carries."""
    implementer: str
    part: str
    variant: str
    revision: int
    board: str


# MIDR values as qemu models them; 'max' is qemu's own ID (implementer 0, part 'Q'). The last
# four need a newer qemu than bookworm's 7.2 (bookworm-backports has 10.0), for --cpus.
CPUS = {
    "cortex-a53": Cpu("0x41", "0xd03", "0x0", 4, "Raspberry Pi 3"),
    "cortex-a72": Cpu("0x41", "0xd08", "0x0", 3, "Raspberry Pi 4"),
    "cortex-a76": Cpu("0x41", "0xd0b", "0x4", 1, "Raspberry Pi 5"),
    "neoverse-n1": Cpu("0x41", "0xd0c", "0x4", 1, "AWS Graviton2"),
    "max": Cpu("0x00", "0x051", "0x0", 0, "qemu: every feature it emulates"),
    "a64fx": Cpu("0x46", "0x001", "0x1", 0, "Fujitsu A64FX (SVE-512, no dot product)"),
    "cortex-a55": Cpu("0x41", "0xd05", "0x2", 0, "little cores of phones, RK3566 boards"),
    "cortex-a710": Cpu("0x41", "0xd47", "0x2", 1, "big cores of 2022 phones (i8mm, SVE2)"),
    "neoverse-n2": Cpu("0x41", "0xd49", "0x0", 3, "Azure Cobalt 100 (i8mm, SVE2)"),
    "neoverse-v1": Cpu("0x41", "0xd40", "0x1", 2, "AWS Graviton3 (i8mm, SVE-256)"),
}
DEFAULT_CPUS = ["cortex-a53", "cortex-a72", "cortex-a76", "neoverse-n1", "max"]

# Linux arm64 hwcap bit names (arch/arm64/include/uapi/asm/hwcap.h), in bit order: the
# "Features" line of /proc/cpuinfo lists the names of the set bits of AT_HWCAP and AT_HWCAP2.
HWCAP_NAMES = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
               "jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat "
               "ilrcpc flagm ssbs sb paca pacg").split()
HWCAP2_NAMES = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm "
                "svef32mm svef64mm svebf16 i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme "
                "smei16i64 smef64f64 smei8i32 smef16f32 smeb16f32 smef32f32 smefa64 wfxt ebf16 "
                "sveebf16 cssc rprfm sve2p1 sme2 sme2p1 smei16i32 smebi32i32 smeb16b16 "
                "smef16f16 mops hbc").split()
AT_HWCAP, AT_HWCAP2 = 16, 26


# ---------------------------------------------------------------- comparison (pure, tested)

def compare_outputs(reference: np.ndarray, got: np.ndarray,
                    quantization: tuple[float, int] | None = None,
                    float_rtol: float = 1e-5) -> dict:
    """Compare one output tensor of the ARM run with the x86 run.

    Integer outputs are compared as raw values: one unit is one quantisation step whatever the
    scale, so `quantization` (scale, zero point) is only reported. Float outputs get the max
    error relative to the reference's largest magnitude (so near-zero elements do not blow it
    up) and count as "within 1 step" up to float_rtol.
    """
    reference, got = np.asarray(reference), np.asarray(got)
    result = {"dtype": reference.dtype.name, "shape": list(reference.shape),
              "quantization": list(quantization) if quantization else None}
    if reference.shape != got.shape or reference.dtype != got.dtype:
        result.update(verdict=f"DIFFERENT: got {got.dtype.name}{list(got.shape)}",
                      max_steps=None, mismatched=None)
        return result
    same = reference == got
    if reference.dtype.kind == "f":
        same |= np.isnan(reference) & np.isnan(got)
    mismatched = int(np.sum(~same))
    result["mismatched"] = mismatched
    result["fraction_mismatched"] = mismatched / max(reference.size, 1)
    if reference.dtype.kind in "iu":
        steps = int(np.max(np.abs(reference.astype(np.int64) - got.astype(np.int64)),
                           initial=0))
        result["max_steps"] = steps
        result["verdict"] = ("bit-exact" if steps == 0 else "within 1 step" if steps == 1
                             else f"DIFFERENT: max {steps} steps")
        return result
    finite = np.isfinite(reference) & np.isfinite(got)
    if np.any(np.isfinite(reference) != np.isfinite(got)):
        rel = float("inf")
    else:
        span = float(np.max(np.abs(reference[finite]), initial=0.0)) or 1.0
        rel = float(np.max(np.abs(reference[finite].astype(np.float64) - got[finite]),
                           initial=0.0)) / span
    result["max_steps"] = None
    result["max_rel_error"] = rel
    result["verdict"] = ("bit-exact" if mismatched == 0 else "within 1 step"
                         if rel <= float_rtol else f"DIFFERENT: rel err {rel:.2g}")
    return result


def worst_verdict(verdicts: list[str]) -> str:
    """The model's verdict: the worst of its outputs' (crash > different > 1 step > exact)."""
    def rank(v: str) -> tuple:
        if v.startswith("CRASH"):
            return (3, 0)
        if v.startswith("DIFFERENT"):  # a step count ranks by size; other reasons rank top
            return (2, int(v.split()[2]) if v.startswith("DIFFERENT: max ") else float("inf"))
        return (0 if v == "bit-exact" else 1, 0)
    return max(verdicts, key=rank) if verdicts else "no outputs"


def compare_runs(reference: dict, got: dict, quantizations: list) -> dict:
    """All outputs of one model: {'verdict', 'outputs': [compare_outputs per output]}."""
    outputs = []
    for i, q in enumerate(quantizations):
        key = f"output_{i}"
        if key not in got:
            outputs.append({"verdict": "DIFFERENT: missing"})
        else:
            outputs.append(compare_outputs(reference[key], got[key], q))
    return {"verdict": worst_verdict([o["verdict"] for o in outputs]), "outputs": outputs}


# ---------------------------------------------------------------- running a model

def invoke_all(interpreter, inputs: list) -> tuple:
    """Raw outputs of `interpreter` for raw inputs (first axis = samples, run one by one at
    the model's batch size) and the seconds spent in invoke(). Runs on x86 and, copied into
    the runner script, under qemu, so both sides feed and read tensors the same way."""
    ins, outs = interpreter.get_input_details(), interpreter.get_output_details()
    batch = int(ins[0]["shape"][0]) or 1
    results, spent = [[] for _ in outs], 0.0
    for start in range(0, len(inputs[0]), batch):
        for detail, x in zip(ins, inputs):
            interpreter.set_tensor(detail["index"], x[start:start + batch])
        t0 = time.perf_counter()
        interpreter.invoke()
        spent += time.perf_counter() - t0
        for out, detail in zip(results, outs):
            out.append(interpreter.get_tensor(detail["index"]).copy())
    return [np.concatenate(r) for r in results], spent


RUNNER_MAIN = '''

def main(model, inputs_npz, outputs_npz):
    """Load the model in LiteRT (XNNPACK, 1 thread), run the saved raw inputs, save outputs."""
    from ai_edge_litert.interpreter import Interpreter

    t0 = time.perf_counter()
    interpreter = Interpreter(model_path=model, num_threads=1)
    interpreter.allocate_tensors()
    data = np.load(inputs_npz)
    inputs = [data[f"input_{i}"] for i in range(len(interpreter.get_input_details()))]
    outputs, invoke_s = invoke_all(interpreter, inputs)
    np.savez(outputs_npz, invoke_s=invoke_s, total_s=time.perf_counter() - t0,
             **{f"output_{i}": y for i, y in enumerate(outputs)})


if __name__ == "__main__":
    import sys
    main(*sys.argv[1:4])
'''


def runner_source() -> str:
    """The guest runner: invoke_all's own source plus a main, so it needs no kopt."""
    return ('"""Written by tools/arm_check.py: run one .tflite on raw inputs under qemu."""\n\n'
            "import time\n\nimport numpy as np\n\n\n" + inspect.getsource(invoke_all)
            + RUNNER_MAIN)


def seeded_inputs(details: list, samples: int, seed: int) -> list[np.ndarray]:
    """Raw inputs at each input's type: int8 inputs uniform over every code (so every value a
    kernel can see is exercised), float inputs standard normal; first axis = samples."""
    rng = np.random.default_rng(seed)
    xs = []
    for d in details:
        shape = (samples * int(d["shape"][0]),) + tuple(int(s) for s in d["shape"][1:])
        dtype = np.dtype(d["dtype"])
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            xs.append(rng.integers(info.min, int(info.max) + 1, shape).astype(dtype))
        else:
            xs.append(rng.normal(0, 1, shape).astype(dtype))
    return xs


def quantization_of(detail: dict) -> tuple[float, int] | None:
    scale, zero = detail["quantization"]
    return (float(scale), int(zero)) if scale else None


def run_x86(model: str, work: str, samples: int, seed: int) -> dict:
    """Seeded inputs -> work/inputs.npz, x86 outputs -> work/x86.npz; returns the run's facts."""
    from kopt.runtime import LiteRTRunner

    runner = LiteRTRunner(model, threads=1)
    inputs = seeded_inputs(runner.inputs, samples, seed)
    np.savez(os.path.join(work, "inputs.npz"), **{f"input_{i}": x for i, x in enumerate(inputs)})
    t0 = time.perf_counter()
    outputs, invoke_s = invoke_all(runner.interpreter, inputs)
    np.savez(os.path.join(work, "x86.npz"), invoke_s=invoke_s,
             total_s=time.perf_counter() - t0, **{f"output_{i}": y for i, y in enumerate(outputs)})
    return {"quantizations": [quantization_of(d) for d in runner.outputs],
            "samples": len(inputs[0]), "ms_per_inference": 1e3 * invoke_s / len(inputs[0])}


def qemu_command(root: str, cpu: str) -> list[str]:
    return [QEMU, "-cpu", cpu, "-L", root, os.path.join(root, GUEST_PYTHON[1:])]


def run_arm(dir_: str, cpu: str, model: str, work: str, timeout: float,
            drop: tuple[str, ...] = ()) -> dict:
    """Run the model under qemu for one CPU; outputs -> work/<cpu>.npz."""
    out = os.path.join(work, f"{root_name(cpu, drop)}.npz")
    if os.path.exists(out):
        os.remove(out)
    cmd = qemu_command(cpu_root(dir_, cpu, drop), cpu) + [
        os.path.join(dir_, "runner.py"), os.path.abspath(model),
        os.path.join(work, "inputs.npz"), out]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=guest_env(dir_), capture_output=True, text=True,
                              timeout=timeout)
        error = None if proc.returncode == 0 else crash_reason(proc.returncode, proc.stderr)
    except subprocess.TimeoutExpired:
        error = f"CRASHED: timeout after {timeout:.0f} s"
    return {"wall_s": time.perf_counter() - t0, "error": error, "outputs": out}


def crash_reason(returncode: int, stderr: str) -> str:
    import signal

    name = signal.Signals(-returncode).name if returncode < 0 else f"exit {returncode}"
    tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
    return f"CRASHED ({name})" + (f": {tail[0][:120]}" if tail else "")


def guest_env(dir_: str) -> dict:
    """A clean guest environment: the aarch64 site-packages only (no host PYTHONPATH)."""
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.path.join(dir_, "site"),
            "PYTHONDONTWRITEBYTECODE": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "LANG": "C.UTF-8"}


# ---------------------------------------------------------------- the emulated machine

def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"arm_check: {', '.join(missing)} not found; install with (as root):\n"
                         f"    {APT_HINT}")


def setup(dir_: str) -> None:
    """Build DIR/rootfs (Debian arm64 with python3.11) and DIR/site (aarch64 wheels of the
    host's ai-edge-litert and numpy versions, so both sides run the same XNNPACK); each is
    skipped when present. Built under a temporary name and renamed, so a failed build is
    never mistaken for a finished one."""
    require_tools(QEMU)
    os.makedirs(dir_, exist_ok=True)
    rootfs = os.path.join(dir_, "rootfs")
    if not os.path.exists(os.path.join(rootfs, GUEST_PYTHON[1:])):
        require_tools("mmdebstrap")
        print(f"[setup] Debian {SUITE} arm64 rootfs -> {rootfs}", flush=True)
        tmp = rootfs + ".partial"
        shutil.rmtree(tmp, ignore_errors=True)
        check_call(["mmdebstrap", "--arch=arm64", "--variant=extract",
                    f"--include={ROOTFS_PACKAGES}", SUITE, tmp], "mmdebstrap")
        os.rename(tmp, rootfs)
    site = os.path.join(dir_, "site")
    if not os.path.isdir(os.path.join(site, "ai_edge_litert")):
        pins = [f"ai-edge-litert=={metadata.version('ai-edge-litert')}",
                f"numpy=={metadata.version('numpy')}"]
        print(f"[setup] aarch64 wheels {' '.join(pins)} -> {site}", flush=True)
        tmp = site + ".partial"
        shutil.rmtree(tmp, ignore_errors=True)
        check_call([sys.executable, "-m", "pip", "install", "--quiet", "--target", tmp,
                    "--platform", WHEEL_PLATFORM, "--python-version", "3.11",
                    "--implementation", "cp", "--only-binary=:all:", *pins], "pip install")
        os.rename(tmp, site)
    with open(os.path.join(dir_, "runner.py"), "w") as f:
        f.write(runner_source())


def check_call(cmd: list[str], what: str) -> None:
    try:
        subprocess.run(cmd, check=True)
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"arm_check: {what} failed (exit {e.returncode}): {' '.join(cmd)}") \
            from None


def cpu_model(spec: str) -> Cpu:
    """The Cpu of a -cpu spec: a name from CPUS, optionally with qemu properties after a
    comma ("max,sve=off,sme=off"), which keep the named model's MIDR."""
    name = spec.split(",")[0]
    if name not in CPUS:
        raise SystemExit(f"arm_check: unknown CPU {name!r}; known: {', '.join(CPUS)}")
    return CPUS[name]


def root_name(cpu: str, drop: tuple[str, ...] = ()) -> str:
    return cpu.replace(",", "_").replace("=", "-") + "".join(f"_no-{f}" for f in drop)


def cpu_root(dir_: str, cpu: str, drop: tuple[str, ...] = ()) -> str:
    """DIR/cpus/QEMU_VERSION/CPU: /proc/cpuinfo and /sys/devices/system/cpu for that CPU
    (under this qemu, whose CPU models differ between versions), symlinks to the
    shared rootfs for the rest. Features come from the guest's own AT_HWCAP/AT_HWCAP2 under
    `-cpu CPU`, so /proc/cpuinfo never claims what the emulated CPU cannot execute; `drop`
    removes names from that line (to test what LiteRT reads from it)."""
    root = os.path.join(dir_, "cpus", qemu_version().split()[2], root_name(cpu, drop))
    marker = os.path.join(root, "hwcaps.json")  # written last: the root is complete
    if os.path.exists(marker):
        return root
    rootfs = os.path.join(dir_, "rootfs")
    os.makedirs(root, exist_ok=True)
    for entry in os.listdir(rootfs):
        link = os.path.join(root, entry)
        if entry not in ("proc", "sys") and not os.path.lexists(link):
            os.symlink(os.path.join(rootfs, entry), link)
    hwcap, hwcap2 = guest_hwcaps(root, cpu)
    write_cpu_files(root, cpu_model(cpu), features(hwcap, hwcap2, drop))
    write(marker, json.dumps({"hwcap": hwcap, "hwcap2": hwcap2}))
    return root


def emulation_fault(version: str, hwcap2: int) -> str | None:
    """Why this qemu cannot be trusted on this CPU, if we know: before 9.0 (8.2.3 in the
    stable series) qemu computed SME's 32-bit integer outer product (SMOPA) wrongly, pairing
    odd rows with odd columns (qemu issue 2083), and XNNPACK's int8 GEMMs use SMOPA on CPUs
    with SME (Debian bookworm's 7.2 is affected: see docs/arm.md)."""
    numbers = tuple(int(n) for n in version.split()[2].split("+")[0].split(".")[:3])
    fixed = numbers >= (9, 0, 0) or (8, 2, 3) <= numbers < (8, 3, 0)
    if hwcap2 >> HWCAP2_NAMES.index("sme") & 1 and not fixed:
        return "qemu < 8.2.3 miscomputes SME SMOPA (qemu issue 2083): not the model's fault"
    return None


def guest_hwcaps(root: str, cpu: str) -> tuple[int, int]:
    """AT_HWCAP and AT_HWCAP2 as qemu gives them to a guest under -cpu CPU (read from
    /proc/self/auxv, which qemu emulates, before any cpuinfo file is needed)."""
    code = ("import sys; d = open('/proc/self/auxv', 'rb').read(); "
            "sys.stdout.write(d.hex())")
    proc = subprocess.run(qemu_command(root, cpu) + ["-S", "-c", code],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"arm_check: {QEMU} -cpu {cpu} failed ({qemu_version()}): "
                         f"{proc.stderr.strip()[-300:]}\n(models it knows: {QEMU} -cpu help)")
    out = proc.stdout
    pairs = struct.iter_unpack("<QQ", bytes.fromhex(out))
    aux = {key: value for key, value in pairs}
    return aux.get(AT_HWCAP, 0), aux.get(AT_HWCAP2, 0)


def features(hwcap: int, hwcap2: int, drop: tuple[str, ...] = ()) -> str:
    """The Features line for these hwcap bits, without the names in `drop`."""
    names = [n for i, n in enumerate(HWCAP_NAMES) if hwcap >> i & 1]
    names += [n for i, n in enumerate(HWCAP2_NAMES) if hwcap2 >> i & 1]
    return " ".join(n for n in names if n not in drop)


def write_cpu_files(root: str, cpu: Cpu, feature_line: str, cores: int = N_CORES) -> None:
    """/proc/cpuinfo and the /sys/devices/system/cpu files the cpuinfo library reads, for an
    N-core machine of this CPU (one cluster, no SMT)."""
    block = (f"processor\t: {{n}}\nBogoMIPS\t: 108.00\nFeatures\t: {feature_line}\n"
             f"CPU implementer\t: {cpu.implementer}\nCPU architecture: 8\n"
             f"CPU variant\t: {cpu.variant}\nCPU part\t: {cpu.part}\n"
             f"CPU revision\t: {cpu.revision}\n\n")
    write(os.path.join(root, "proc", "cpuinfo"), "".join(block.format(n=n) for n in range(cores)))
    sysdir = os.path.join(root, "sys", "devices", "system", "cpu")
    span = f"0-{cores - 1}\n"
    for name in ("possible", "present", "online"):
        write(os.path.join(sysdir, name), span)
    for n in range(cores):
        topo = os.path.join(sysdir, f"cpu{n}", "topology")
        for name, value in (("physical_package_id", "0"), ("core_id", str(n)),
                            ("cluster_id", "0"), ("core_siblings_list", span.strip()),
                            ("package_cpus_list", span.strip()), ("cluster_cpus_list",
                                                                  span.strip()),
                            ("thread_siblings_list", str(n)), ("core_cpus_list", str(n))):
            write(os.path.join(topo, name), value + "\n")


def write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


@functools.cache
def qemu_version() -> str:
    """'qemu-aarch64 version 7.2.22 (Debian ...)': the first line of --version."""
    return subprocess.run([QEMU, "--version"], capture_output=True, text=True,
                          check=True).stdout.splitlines()[0]


def host_cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines()
                 if line.startswith("Model name")), "unknown")


# ---------------------------------------------------------------- example models

def mobilenet_like(width: int = 16, classes: int = 10):
    """A small MobileNet-style net: stride-2 stem, depthwise-separable blocks with BN+ReLU6,
    global average pooling (MEAN in TFLite), Dense: the depthwise kernels the seed models
    do not have."""
    import keras

    L = keras.layers
    x = inp = keras.Input((28, 28, 1), name="image")
    x = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(width, 3, strides=2, padding="same",
                                                    use_bias=False)(x)))
    for filters, stride in ((2 * width, 1), (4 * width, 2), (4 * width, 1)):
        x = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(x)
        x = L.ReLU(6.0)(L.BatchNormalization()(x))
        x = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(filters, 1, use_bias=False)(x)))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(classes, activation="softmax")(x), name="mobilenet_like")


def build_examples(out_dir: str, epochs: int = 1) -> list[str]:
    """The example models (VGG-like, tree, residual, MobileNet-style) trained `epochs` on the
    digits train split and exported full-int8 with int8 I/O; reused when already there."""
    sys.path[:0] = [REPO, os.path.join(REPO, "examples")]
    import keras
    from seed_models import residual, tree, vgg_like

    from kopt.flows.data import digits_splits
    from kopt.runtime import export_tflite

    builders = {"vgg_like": vgg_like, "tree": tree, "residual": residual,
                "mobilenet_like": mobilenet_like}
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"{name}.tflite") for name in builders]
    if all(os.path.exists(p) for p in paths):
        return paths
    (x_train, y_train), *_ = digits_splits(size=28)
    for (name, build), path in zip(builders.items(), paths):
        if os.path.exists(path):
            continue
        print(f"[examples] {name}: train {epochs} epoch(s), export int8 -> {path}", flush=True)
        keras.utils.set_random_seed(0)
        model = build()
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
        export_tflite(model, path + ".partial", representative_data=x_train[:256])
        os.rename(path + ".partial", path)
    return paths


# ---------------------------------------------------------------- the check

def check(models: list[str], dir_: str, cpus: list[str], samples: int, seed: int, jobs: int,
          timeout: float, drop: tuple[str, ...] = ()) -> list[dict]:
    """x86 reference then every (model, CPU) under qemu, `jobs` at a time; one row each."""
    rows, tasks = [], []
    for model in models:
        work = os.path.join(dir_, "runs", os.path.splitext(os.path.basename(model))[0])
        os.makedirs(work, exist_ok=True)
        ref = run_x86(model, work, samples, seed)
        print(f"[x86] {os.path.basename(model)}: {ref['samples']} samples, "
              f"{ref['ms_per_inference']:.2f} ms/inference", flush=True)
        tasks += [(model, work, ref, cpu) for cpu in cpus]
    for cpu in cpus:
        cpu_root(dir_, cpu, drop)  # before the pool, so two jobs never build one root

    def one(task: tuple) -> dict:
        model, work, ref, cpu = task
        print(f"[{cpu}] {os.path.basename(model)} ...", flush=True)
        run = run_arm(dir_, cpu, model, work, timeout, drop)
        row = {"model": os.path.basename(model), "cpu": cpu, "board": cpu_model(cpu).board,
               "cpuinfo_dropped": list(drop),
               "wall_s": round(run["wall_s"], 1), "samples": ref["samples"],
               "x86_ms_per_inference": round(ref["ms_per_inference"], 3)}
        with open(os.path.join(cpu_root(dir_, cpu, drop), "hwcaps.json")) as f:
            fault = emulation_fault(qemu_version(), json.load(f)["hwcap2"])
        if run["error"]:
            row.update(verdict=run["error"], outputs=[])
        else:
            got = dict(np.load(run["outputs"]))
            row.update(compare_runs(dict(np.load(os.path.join(work, "x86.npz"))), got,
                                    ref["quantizations"]))
            row["ms_per_inference"] = round(1e3 * float(got["invoke_s"]) / ref["samples"], 1)
        if fault and row["verdict"] not in ("bit-exact", "within 1 step"):
            row["emulation_fault"] = fault
        print(f"[{cpu}] {row['model']}: {row['verdict']} ({row['wall_s']:.0f} s)", flush=True)
        return row

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        rows = list(pool.map(one, tasks))
    return rows


def table(rows: list[dict], cpus: list[str]) -> str:
    """Models down, CPUs across: the verdict, the wall time of the emulated run (mostly
    starting Python and LiteRT under qemu) and the emulated milliseconds per inference."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    cell = {(r["model"], r["cpu"]): f"{r['verdict']} ({r['wall_s']:.0f} s"
            + (f", {r['ms_per_inference']:.0f} ms)" if "ms_per_inference" in r else ")")
            for r in rows}
    header = ["model"] + cpus
    body = [[m] + [cell.get((m, c), "-") for c in cpus] for m in models]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    lines = [" | ".join(str(x).ljust(w) for x, w in zip(line, widths))
             for line in [header] + body]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    global QEMU  # --qemu: one binary for every run of this process
    sys.path.insert(0, REPO)  # kopt, when it is not installed
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", help=".tflite files")
    p.add_argument("--examples", action="store_true",
                   help="build (once, into DIR/examples) and check the example models")
    p.add_argument("--setup", nargs="?", const="", metavar="DIR",
                   help="only build the aarch64 rootfs and wheels (into DIR if given)")
    p.add_argument("--dir", default=DEFAULT_DIR,
                   help=f"cache for rootfs, wheels and runs (default {DEFAULT_DIR})")
    p.add_argument("--cpus", nargs="+", default=DEFAULT_CPUS, metavar="CPU",
                   help=f"qemu -cpu models, optionally with properties ('max,sve=off'); "
                        f"default {' '.join(DEFAULT_CPUS)}")
    p.add_argument("--cpuinfo-drop", nargs="+", default=[], metavar="FEATURE",
                   help="leave these out of /proc/cpuinfo's Features line (experiments)")
    p.add_argument("--samples", type=int, default=16, help="inputs per model (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="qemu processes at a time")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per emulated run")
    p.add_argument("--qemu", default=QEMU,
                   help=f"qemu-user binary for aarch64 (default {QEMU}; $KOPT_ARM_QEMU)")
    p.add_argument("--json", help="write the rows and the environment here")
    args = p.parse_args(argv)
    QEMU = args.qemu
    if args.setup is None and not (args.models or args.examples):
        p.error("give .tflite files, --examples or --setup")
    for cpu in args.cpus:
        cpu_model(cpu)
    dir_ = os.path.abspath(args.setup or args.dir)
    setup(dir_)
    if args.setup is not None:
        print(f"[setup] ready: {dir_}")
        return 0
    models = [os.path.abspath(m) for m in args.models]
    if args.examples:
        models += build_examples(os.path.join(dir_, "examples"))
    t0 = time.perf_counter()
    rows = check(models, dir_, args.cpus, args.samples, args.seed, args.jobs, args.timeout,
                 tuple(args.cpuinfo_drop))
    env = {"qemu": qemu_version(), "host_cpu": host_cpu(),
           "ai_edge_litert": metadata.version("ai-edge-litert"), "samples": args.samples,
           "seed": args.seed, "total_s": round(time.perf_counter() - t0, 1)}
    print()
    print(table(rows, args.cpus))
    print(f"\n{env['qemu']}; host {env['host_cpu']}; ai-edge-litert {env['ai_edge_litert']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "results": rows}, f, indent=1)
    for fault in sorted({r["emulation_fault"] for r in rows if "emulation_fault" in r}):
        cpus = sorted({r["cpu"] for r in rows if r.get("emulation_fault") == fault})
        print(f"{', '.join(cpus)}: {fault}; ignored in the exit status (use a newer qemu, "
              f"--qemu)")
    ok = all(r["verdict"] in ("bit-exact", "within 1 step") for r in rows
             if "emulation_fault" not in r)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
