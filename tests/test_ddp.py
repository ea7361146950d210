"""Data-parallel training: `cu.train.fit` under `torchrun` with two CPU processes (gloo).

Each test starts `torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py MODE OUT` and
reads what the two processes left in OUT (their weights, histories and per-rank log files).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
import ddp_worker  # noqa: E402

from course_utils import device as cu_device  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


def torchrun(mode: str, out: Path, timeout: float = 90) -> tuple[subprocess.CompletedProcess, float]:
    """Run the worker in two processes; return the finished process and its wall time in seconds."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COURSE_FAST": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "--log-dir", str(out / "logs"), "--redirects", "3",
               str(REPO / "tests" / "ddp_worker.py"), mode, str(out)]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    return done, time.perf_counter() - start


def rank_log(out: Path, rank: int, stream: str) -> str:
    """What process `rank` wrote to `stream` ("stdout"/"stderr"), from torchrun's --log-dir."""
    return "".join(p.read_text() for p in (out / "logs").rglob(f"{rank}/{stream}.log"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One torchrun training run shared by the tests that read its results."""
    out = tmp_path_factory.mktemp("ddp_train")
    done, _ = torchrun("train", out)
    assert done.returncode == 0, done.stdout + done.stderr + rank_log(out, 0, "stderr") + rank_log(out, 1, "stderr")
    return out


def test_two_processes_match_one_process_on_the_same_global_batches(trained, tmp_path):
    weights = [torch.load(trained / f"weights_rank{r}.pt") for r in (0, 1)]
    for name in weights[0]:  # the replicas are identical
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=0, atol=0)
    # one process, batches of 2 x 8: the global batches the two processes saw together
    torch.set_num_threads(1)
    single, history = ddp_worker.run("train", tmp_path, batch_size=2 * ddp_worker.BATCH,
                                     checkpoint=tmp_path / "single.pt")
    for name, value in single.state_dict().items():
        torch.testing.assert_close(weights[0][name], value, rtol=1e-4, atol=1e-5)
    ddp = json.loads((trained / "history_rank0.json").read_text())
    assert ddp["world"] == 2 and len(ddp["train_loss"]) == ddp_worker.EPOCHS
    assert ddp["train_loss"] == pytest.approx(history.train_loss, rel=1e-4)
    assert ddp["valid_loss"] == pytest.approx(history.valid_loss, rel=1e-4)
    assert ddp["accuracy"] == pytest.approx(history.metrics["accuracy"], abs=1e-6)  # averaged over both shards
    assert ddp["train_loss"][-1] < ddp["train_loss"][0]  # it learned


def test_rank_zero_alone_writes_the_checkpoint_and_prints(trained):
    assert (trained / "best.pt").is_file()
    assert (trained / "saved_by_rank0").exists() and not (trained / "saved_by_rank1").exists()
    assert "epochs" in rank_log(trained, 0, "stderr")  # the progress bar
    assert "epochs" not in rank_log(trained, 1, "stderr")


def test_a_failing_process_fails_the_run_with_its_error(tmp_path):
    done, seconds = torchrun("fail", tmp_path)
    assert done.returncode != 0
    assert "rank 1 failed on purpose" in rank_log(tmp_path, 1, "stderr") + done.stdout + done.stderr
    assert seconds < 60


def test_a_stuck_process_fails_the_run_after_the_timeout(tmp_path):
    done, seconds = torchrun("hang", tmp_path)
    assert done.returncode != 0
    assert "timed out" in (rank_log(tmp_path, 0, "stderr") + done.stderr).lower()
    assert seconds < 60  # rank 1 sleeps 120 s: the 3 s timeout ended the run, not rank 1


def test_without_torchrun_nothing_changes(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not cu_device.launched_by_torchrun() and not cu_device.is_distributed()
    assert (cu_device.rank(), cu_device.world_size(), cu_device.is_main_process()) == (0, 1, True)
    assert cu_device.init_distributed("cpu") == torch.device("cpu")
    assert not torch.distributed.is_initialized()  # no process group was started
    assert cu_device.all_reduce(1.5, 2, op="max") == [1.5, 2.0]  # one process: the values themselves
    cu_device.finish_distributed()  # harmless without a group
