"""Device choice, seeding and mixed precision: the first thing every lab calls.

The course runs on a laptop CPU, on Apple silicon and on Colab GPUs. This module hides the
differences behind three small functions: `pick_device` chooses the fastest device there is,
`seed_everything` makes a run repeatable, and `autocast` turns on mixed precision where it helps.
It is also the one place that reads the course's environment variables (`COURSE_FAST`,
`COURSE_DEVICE`, `COURSE_GRADING`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import time
from typing import Callable, Iterator

import numpy as np
import torch

FAST: bool = os.environ.get("COURSE_FAST", "0").strip().lower() in {"1", "true", "yes", "on"}
"""True when `COURSE_FAST=1`: notebooks shrink data and epochs so each lab runs in CPU minutes."""


def grading() -> bool:
    """True when `COURSE_GRADING=1`: checkers raise on a wrong answer, so nbgrader's autograder scores it zero.

    Read at each call (not at import), so `make grade` can switch it on for the kernels nbgrader starts.
    In class (unset) a checker only prints "not solved yet" and the notebook runs on.
    """
    return os.environ.get("COURSE_GRADING", "0").strip().lower() in {"1", "true", "yes", "on"}


def pick_device(prefer: str | None = None) -> torch.device:
    """Return the device to train on: CUDA, then Apple MPS, then CPU.

    `prefer` (or the environment variable `COURSE_DEVICE`) forces a choice such as `"cpu"` or
    `"cuda:1"`. Asking for a GPU that is not there raises a `RuntimeError` that says what to do,
    instead of failing later deep inside PyTorch.
    """
    prefer = prefer or os.environ.get("COURSE_DEVICE") or None
    if prefer is not None:
        device = torch.device(prefer)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"You asked for {prefer!r} but PyTorch sees no CUDA GPU here. On Colab choose "
                "Runtime > Change runtime type > GPU; elsewhere unset COURSE_DEVICE or use 'cpu'."
            )
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError(
                f"You asked for {prefer!r} but Apple MPS is not available on this machine; "
                "use 'cpu' instead."
            )
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> None:
    """Seed Python's `random`, NumPy and PyTorch (all devices) so that a run can be repeated.

    Bit-for-bit repeatability on a GPU would also need deterministic kernels, which are slower;
    the labs only need the same numbers to two or three digits, which seeding gives.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The half-precision dtype worth using for training on `device`, or None for plain fp32.

    Ampere and newer GPUs get bfloat16 (same range as fp32, no loss scaling needed); older
    GPUs get float16. A CPU gets bfloat16 only when it has native bfloat16 instructions
    (`cpu_bf16_instructions`, e.g. AVX512-BF16 or AMX); without them PyTorch emulates bfloat16,
    which is slower than fp32, so other CPUs (and MPS) get None.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_bf16_instructions():
        return torch.bfloat16
    return None


@contextlib.contextmanager
def autocast(device: torch.device, enabled: bool = True, dtype: torch.dtype | None = None) -> Iterator[None]:
    """Run the enclosed forward pass in mixed precision where the device supports it.

    `with cu.autocast(device): loss = model(x)` uses `amp_dtype(device)`: bf16/fp16 on a GPU, bf16
    on a CPU with native bf16 instructions, and nothing (fp32) on other CPUs; `dtype=` overrides it.
    """
    dtype = (dtype or amp_dtype(device)) if enabled else None
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def cuda_summary() -> str:
    """One phrase on CUDA that cannot be misread: the GPU found, or "no GPU found" first.

    `torch.version.cuda` is the CUDA version PyTorch was *built* with; it is set on a machine
    without any GPU too, so printed alone ("cuda: 13.0") it reads as "CUDA works". Here it only
    ever appears next to what was found.
    """
    built = torch.version.cuda
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} GPU(s) found, {torch.cuda.get_device_name(0)} (CUDA {built})"
    if built:
        return f"no GPU found (this PyTorch build could use CUDA {built} if there were one)"
    return "no GPU found (this PyTorch build is CPU-only)"


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str:
    """The text of `/proc/cpuinfo`, read once ("" where there is none, e.g. not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            return cpuinfo.read()
    except OSError:
        return ""


def cpu_bf16_instructions() -> tuple[str, ...]:
    """The CPU's instruction-set flags for native bfloat16 arithmetic, e.g. `('amx_bf16', 'avx512_bf16')`.

    CPUs with these (Intel AMX or AVX512-BF16, ARM's BF16 extension, shown as `bf16`) multiply
    bfloat16 matrices in hardware; without them PyTorch emulates bfloat16 by converting to float32
    and back, which is slower. Read once from `/proc/cpuinfo` (Linux); elsewhere the tuple is empty.
    """
    lines = _cpuinfo().splitlines()
    flags = {word for line in lines if line.startswith(("flags", "Features")) for word in line.split()}
    return tuple(sorted(flags & {"amx_bf16", "avx512_bf16", "bf16"}))


def cpu_name() -> str:
    """The CPU's model name from `/proc/cpuinfo`, e.g. "AMD EPYC" ("unknown" where there is none)."""
    names = (line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name"))
    return next(names, "unknown")


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with PyTorch's CPU operations on `n` threads, then restore the old number.

    On a busy machine, a small job split over several threads waits for every thread to get a core,
    so its timing measures the other programs, not the code. Timing on one thread
    (`with torch_threads(1): ...`) measures the code itself on any machine; it does not affect GPUs.
    """
    if n < 1:
        raise ValueError(f"torch_threads needs at least 1 thread, got {n}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def time_runs(fn: Callable[[], object], repeat: int = 7, device: torch.device | None = None,
              number: int = 1) -> np.ndarray:
    """Seconds per call of `fn()` in each of `repeat` runs of `number` calls, after a warm-up: an array `[repeat]`.

    Pass the `device` the work runs on: for a CUDA GPU each run is waited for
    (`torch.cuda.synchronize`), because GPU calls return before the work is done. For calls of well
    under a millisecond, `number` > 1 averages the clock's and the scheduler's jitter away. Report the
    median and the spread of the array, not one run: on a shared machine single runs vary a lot.
    """
    if repeat < 1 or number < 1:
        raise ValueError(f"time_runs needs repeat >= 1 and number >= 1, got repeat={repeat}, number={number}")
    wait = device is not None and torch.device(device).type == "cuda"

    def run() -> float:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        if wait:
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / number

    run()  # warm-up: first calls pay for allocation and kernel selection
    return np.array([run() for _ in range(repeat)])


def speed_verdict(times: np.ndarray, baseline: np.ndarray) -> str:
    """Compare two arrays of run times: "faster", "slower", or "a tie" when their middle halves overlap.

    The middle half of the runs (25th to 75th percentile, `np.percentile`) ignores the odd run that a
    busy machine slows down. `times` is faster only if its middle half lies wholly below the middle half
    of `baseline` (slower in the mirror case); otherwise the difference is inside the timing noise.
    """
    low, high = np.percentile(times, [25, 75])
    base_low, base_high = np.percentile(baseline, [25, 75])
    if high < base_low:
        return "faster"
    if low > base_high:
        return "slower"
    return "a tie"


def device_report(device: torch.device) -> str:
    """One line that says where the lab runs: device, its name, torch version, threads, and the mixed
    precision available there (what `amp_dtype` picks; training uses it only where a lab passes it)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = torch.cuda.get_device_name(index)
        gib = torch.cuda.get_device_properties(index).total_memory / 2**30
        name = f"{name}, {gib:.0f} GiB"
    elif device.type == "mps":
        name = "Apple GPU (Metal)"
    else:
        name = f"{os.cpu_count()} CPU cores"
    dtype = amp_dtype(device)
    amp = str(dtype).replace("torch.", "") if dtype else "none (fp32 only)"
    mode = "fast mode (COURSE_FAST=1)" if FAST else "full mode"
    return (
        f"device: {device} ({name}) | torch {torch.__version__} | "
        f"threads: {torch.get_num_threads()} | mixed precision available: {amp} | {mode}"
    )


def setup(seed: int = 0, device: str | None = None) -> torch.device:
    """Start a lab: choose the device, seed everything, print the one-line device report.

    Returns the `torch.device` to move models and tensors to. Call it once at the top of a
    notebook: `device = cu.setup()`.
    """
    chosen = pick_device(device)
    seed_everything(seed)
    print(device_report(chosen))
    return chosen


# --------------------------------------------------------------------------------------------
# Several processes: data-parallel training under torchrun (PyTorch's own torch.distributed)
# --------------------------------------------------------------------------------------------

DDP_TIMEOUT_S: float = 600.0
"""Seconds a collective (all-reduce, barrier) waits for the other processes before it fails the run."""


def launched_by_torchrun() -> bool:
    """True when this process is one of several started by `torchrun` (WORLD_SIZE > 1 in its environment)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    """True when a torch.distributed process group with more than one process is running."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's number among all processes (0 when there is only one)."""
    import torch.distributed as dist

    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """How many processes train together (1 without torchrun)."""
    import torch.distributed as dist

    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0, the process that prints and writes files (always True without torchrun)."""
    return rank() == 0


def init_distributed(device: torch.device | str = "cpu", timeout_s: float = DDP_TIMEOUT_S) -> torch.device:
    """Join the process group that `torchrun` set up, if there is one; return this process's device.

    Under `torchrun --nproc_per_node=N` (or multi-node with `--nnodes`/`--rdzv-endpoint`) each
    process reads RANK, WORLD_SIZE and the rendezvous address from its environment: GPUs use the
    NCCL backend and one GPU per process (`cuda:LOCAL_RANK`), CPUs use gloo. A collective that
    waits longer than `timeout_s` seconds (a crashed or stuck process) raises an error instead of
    hanging. Without torchrun, or when the group exists already, nothing changes and `device`
    comes back (as the GPU of this process under torchrun).
    """
    from datetime import timedelta

    import torch.distributed as dist

    device = torch.device(device)
    if device.type == "cuda" and (launched_by_torchrun() or is_distributed()):
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if launched_by_torchrun() and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s),
                                device_id=device if device.type == "cuda" else None)
    return device


def all_reduce(*values: float | torch.Tensor, device: torch.device | str = "cpu", op: str = "sum") -> list[float]:
    """The sums (`op="sum"`) or maxima (`op="max"`) over all processes of each of `values`.

    With one process the values come back as they are. Every process must call it at the same
    point of its program: it waits for all of them (at most the group's timeout).
    """
    import torch.distributed as dist

    if not is_distributed():
        return [float(v) for v in values]
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
    if op not in ops:
        raise ValueError(f"op must be one of {sorted(ops)}, got {op!r}.")
    result = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)  # [len(values)]
    dist.all_reduce(result, op=ops[op])  # every process now holds the same numbers
    return result.tolist()


def finish_distributed() -> None:
    """Leave the process group (call once at the end of a torchrun script; harmless without one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
