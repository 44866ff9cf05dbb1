"""tools/arm_check.py's pure parts on synthetic arrays: the verdicts, the Features line, the
cpuinfo files and the guest runner's source. No qemu, no model: fast."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def arm(load_tool):
    return load_tool("arm_check")


def int8(values):
    return np.array(values, dtype=np.int8)


def test_identical_int8_is_bit_exact(arm):
    r = arm.compare_outputs(int8([[-128, 0, 127]]), int8([[-128, 0, 127]]), (0.0039, -128))
    assert r["verdict"] == "bit-exact" and r["max_steps"] == 0 and r["mismatched"] == 0
    assert r["quantization"] == [0.0039, -128]


def test_one_step_is_within_one_step(arm):
    r = arm.compare_outputs(int8([[5, 6, 7, 8]]), int8([[5, 7, 6, 8]]), (0.1, 0))
    assert r["verdict"] == "within 1 step" and r["max_steps"] == 1
    assert r["mismatched"] == 2 and r["fraction_mismatched"] == 0.5


def test_steps_are_counted_in_raw_values_without_int8_overflow(arm):
    # -128 vs 127 is 255 steps: int8 subtraction would wrap to -1
    r = arm.compare_outputs(int8([[-128, 0]]), int8([[127, 0]]), (0.5, 3))
    assert r["max_steps"] == 255 and r["verdict"] == "DIFFERENT: max 255 steps"


def test_scale_does_not_change_the_step_count(arm):
    a, b = int8([[1, 2, 3]]), int8([[1, 4, 3]])
    assert arm.compare_outputs(a, b, (1e-4, 0))["max_steps"] == 2
    assert arm.compare_outputs(a, b, (10.0, 0))["max_steps"] == 2


def test_shape_or_dtype_mismatch_is_different(arm):
    assert arm.compare_outputs(int8([[1, 2]]), int8([[1, 2, 3]]))["verdict"].startswith(
        "DIFFERENT: got int8")
    r = arm.compare_outputs(int8([[1]]), np.array([[1]], np.uint8))
    assert r["verdict"] == "DIFFERENT: got uint8[1, 1]"


def test_float_outputs_use_relative_error(arm):
    ref = np.array([10.0, -20.0, 0.001], np.float32)
    assert arm.compare_outputs(ref, ref.copy())["verdict"] == "bit-exact"
    close = ref + np.float32(1e-5)
    r = arm.compare_outputs(ref, close)
    assert r["verdict"] == "within 1 step" and r["max_rel_error"] < 1e-5
    far = ref.copy()
    far[2] = 1.0  # large next to the element, small next to the output's range: 5e-2
    r = arm.compare_outputs(ref, far)
    assert r["verdict"].startswith("DIFFERENT: rel err") and r["max_rel_error"] == \
        pytest.approx(0.999 / 20, rel=1e-3)


def test_float_nan_and_inf(arm):
    ref = np.array([np.nan, 1.0], np.float32)
    assert arm.compare_outputs(ref, ref.copy())["verdict"] == "bit-exact"
    r = arm.compare_outputs(np.array([1.0, 2.0], np.float32), np.array([np.inf, 2.0], np.float32))
    assert r["max_rel_error"] == float("inf") and r["verdict"].startswith("DIFFERENT")


def test_worst_verdict_orders_crash_different_step_exact(arm):
    w = arm.worst_verdict
    assert w(["bit-exact", "within 1 step"]) == "within 1 step"
    assert w(["DIFFERENT: max 3 steps", "DIFFERENT: max 12 steps", "bit-exact"]) == \
        "DIFFERENT: max 12 steps"
    assert w(["DIFFERENT: max 12 steps", "CRASHED (SIGILL)"]) == "CRASHED (SIGILL)"
    assert w(["bit-exact"]) == "bit-exact" and w([]) == "no outputs"


def test_compare_runs_covers_every_output(arm):
    ref = {"output_0": int8([[1, 2]]), "output_1": int8([[3]])}
    got = {"output_0": int8([[1, 3]]), "invoke_s": np.float64(0.1)}
    r = arm.compare_runs(ref, got, [(0.1, 0), (0.2, 1)])
    assert [o["verdict"] for o in r["outputs"]] == ["within 1 step", "DIFFERENT: missing"]
    assert r["verdict"] == "DIFFERENT: missing"


def test_features_line_follows_hwcap_bits(arm):
    hwcap = 1 << 0 | 1 << 1 | 1 << 20  # fp asimd asimddp
    hwcap2 = 1 << 13 | 1 << 23  # i8mm sme
    assert arm.features(hwcap, hwcap2) == "fp asimd asimddp i8mm sme"
    assert arm.features(hwcap, hwcap2, drop=("sme",)) == "fp asimd asimddp i8mm"
    assert arm.HWCAP2_NAMES[37] == "sme2"  # the bit Linux and cpuinfo use


def test_cpu_files_describe_the_emulated_machine(arm, tmp_path):
    arm.write_cpu_files(str(tmp_path), arm.CPUS["cortex-a76"], "fp asimd asimddp", cores=4)
    cpuinfo = (tmp_path / "proc/cpuinfo").read_text()
    assert cpuinfo.count("processor\t:") == 4 and "CPU part\t: 0xd0b" in cpuinfo
    assert "CPU implementer\t: 0x41" in cpuinfo and "Features\t: fp asimd asimddp\n" in cpuinfo
    cpu = tmp_path / "sys/devices/system/cpu"
    assert (cpu / "possible").read_text() == (cpu / "online").read_text() == "0-3\n"
    assert (cpu / "cpu3/topology/core_siblings_list").read_text() == "0-3\n"


def test_cpu_specs(arm):
    assert arm.cpu_model("max,sve=off,sme=off") is arm.CPUS["max"]
    assert arm.root_name("max,sme=off", ("i8mm",)) == "max_sme-off_no-i8mm"
    with pytest.raises(SystemExit, match="unknown CPU"):
        arm.cpu_model("pentium")


def test_seeded_inputs_cover_int8_range_and_repeat(arm):
    details = [{"shape": np.array([1, 28, 28, 1]), "dtype": np.int8},
               {"shape": np.array([1, 3]), "dtype": np.float32}]
    a, b = arm.seeded_inputs(details, 16, seed=0), arm.seeded_inputs(details, 16, seed=0)
    assert a[0].shape == (16, 28, 28, 1) and a[0].dtype == np.int8
    assert a[0].min() == -128 and a[0].max() == 127 and a[1].dtype == np.float32
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


class FakeInterpreter:
    """Doubles its one int8 input: enough to check invoke_all's batching."""

    def __init__(self):
        self.x = None

    def get_input_details(self):
        return [{"index": 0, "shape": np.array([2, 3])}]

    def get_output_details(self):
        return [{"index": 1}]

    def set_tensor(self, index, x):
        assert x.shape == (2, 3)
        self.x = x

    def invoke(self):
        pass

    def get_tensor(self, index):
        return (self.x * 2).astype(np.int8)


def test_invoke_all_runs_at_the_model_batch(arm):
    x = np.arange(12, dtype=np.int8).reshape(4, 3)
    (y,), seconds = arm.invoke_all(FakeInterpreter(), [x])
    assert np.array_equal(y, x * 2) and seconds >= 0


def test_runner_source_is_standalone(arm):
    source = arm.runner_source()
    compile(source, "runner.py", "exec")
    assert "def invoke_all" in source and "import kopt" not in source
    assert "from ai_edge_litert.interpreter import Interpreter" in source


def test_smopa_fault_is_known_for_old_qemu_with_sme(arm):
    sme = 1 << 23
    old = "qemu-aarch64 version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"
    assert "SMOPA" in arm.emulation_fault(old, sme)
    assert arm.emulation_fault(old, 0) is None  # no SME: XNNPACK never issues SMOPA
    assert arm.emulation_fault("qemu-aarch64 version 8.2.2", sme) is not None
    assert arm.emulation_fault("qemu-aarch64 version 8.2.3", sme) is None
    assert arm.emulation_fault("qemu-aarch64 version 10.0.2 (Debian 1:10.0.2+ds-2)", sme) is None
