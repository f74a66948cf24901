"""Threads are configured at run time in one place (parallel.configure_threads), whatever the import order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pvt_np
from pvt_np.ops import parallel

REPO = Path(__file__).resolve().parents[1]

# NumPy first, as notebooks do; nothing configured by hand; one op call.
FIRST_OP = r"""
import json, os
import numpy as np
import pvt_np
from threadpoolctl import threadpool_info
from pvt_np.ops import parallel

before = sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
pvt_np.ops.linear_forward(np.ones((4, 3)), np.ones((2, 3)))
print(json.dumps({
    "blas_before": before,
    "blas_after": sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}),
    "threads": parallel.get_num_threads(),
    "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    "timeout_var": os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
}))
"""


def test_first_op_configures_threads_whatever_the_import_order() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    env["OPENBLAS_NUM_THREADS"] = "2"  # BLAS starts with two threads: the first op must bring it down to one
    env.pop("OPENBLAS_THREAD_TIMEOUT", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", FIRST_OP], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["cores"] >= 2:  # OpenBLAS caps its threads at the cores it sees
        assert out["blas_before"] == [2]
    assert out["blas_after"] == [1]
    assert out["threads"] == max(1, min(out["cores"], parallel.MAX_THREADS))
    assert out["timeout_var"] is None  # nothing is set in the environment on import


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_configure_threads_refuses_a_bad_count(bad: object) -> None:
    before = parallel.get_num_threads()
    with pytest.raises(ValueError, match=r"configure_threads: threads must be a positive integer, got"):
        parallel.configure_threads(bad)  # type: ignore[arg-type]
    assert parallel.get_num_threads() == before


def test_configure_threads_sets_the_count_and_limits_blas() -> None:
    from threadpoolctl import threadpool_info

    before = parallel.get_num_threads()
    try:
        assert parallel.configure_threads(3) == 3 == parallel.get_num_threads()
        assert {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"} == {1}
    finally:
        parallel.configure_threads(before)


def test_set_threads_sets_pvt_np_threads_and_holds_blas_at_one() -> None:
    """pvt_np.set_threads, the public call (notebooks use it after NumPy has loaded its BLAS)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    before = parallel.get_num_threads()
    try:
        threadpool_limits(limits=2, user_api="blas")  # as if BLAS had started with two threads
        assert pvt_np.set_threads(3) == 3 == parallel.get_num_threads()
        assert {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"} == {1}
        assert pvt_np.set_threads(np.int64(1)) == 1 == parallel.get_num_threads()
    finally:
        parallel.configure_threads(before)


@pytest.mark.parametrize("bad", [0, -2, 2.0, "4", None, False])
def test_set_threads_refuses_a_bad_count(bad: object) -> None:
    before = parallel.get_num_threads()
    with pytest.raises(ValueError, match=r"set_threads: threads must be a positive integer, got"):
        pvt_np.set_threads(bad)  # type: ignore[arg-type]
    assert parallel.get_num_threads() == before


@pytest.mark.parametrize("threads", [2, 3])
def test_chunks_run_on_the_calling_thread_and_threads_minus_one_workers(threads: int) -> None:
    """Every thread that runs chunks keeps its own scratch buffers, so a job must not spread over more than
    the configured count: the caller and threads - 1 pool workers, over many jobs in a row (a pool of
    ``threads`` workers had grown a spare one, whose buffers were as large as the others')."""
    import threading
    import time

    before = parallel.get_num_threads()
    seen: set[int] = set()
    lock = threading.Lock()

    def kernel(start: int, stop: int) -> None:
        with lock:
            seen.add(threading.get_ident())
        time.sleep(0.0002)

    try:
        parallel.configure_threads(threads)
        for _ in range(300):
            parallel.for_each_chunk(4 * threads, 1, kernel, rows_per_chunk=1)
        assert threading.get_ident() in seen
        assert len(seen) == threads
    finally:
        parallel.configure_threads(before)


# The page faults of a second 64 MiB array after the first was freed, before and after the first op, and with
# glibc's sizes put back. 64 MiB is above the largest mmap threshold glibc's default ever reaches (32 MiB).
REUSE = r"""
import json, resource
import numpy as np
import pvt_np
from pvt_np.ops import parallel

def second_array_faults():
    a = np.ones(16 << 20, np.float32)
    del a
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.ones(16 << 20, np.float32)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

out = {"glibc_default": second_array_faults()}
pvt_np.ops.linear_forward(np.ones((4, 3)), np.ones((2, 3)))
out["after_first_op"] = second_array_faults()
out["reuse_off"] = parallel.configure_memory(False)
out["glibc_again"] = second_array_faults()
print(json.dumps(out))
"""


def test_first_op_makes_freed_arrays_stay_for_reuse() -> None:
    """The first op makes glibc keep a freed 64 MiB array: the next one costs no page faults (glibc's default
    maps and unmaps it, faulting every page, or every 2 MiB with transparent huge pages); reuse=False undoes it."""
    if not parallel.configure_memory():
        pytest.skip("the C library is not glibc")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", REUSE], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["glibc_default"] >= 32, out  # 64 MiB in 2 MiB huge pages at the least
    assert out["after_first_op"] <= 2, out
    assert out["reuse_off"] is True and out["glibc_again"] >= 32, out


# -- pvt-np bench --neighbour ------------------------------------------------------------------------
def test_bench_neighbour_reports_each_slowdown(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each pair is timed quiet, then beside every neighbour asked for; the slowdown is beside / quiet."""
    import argparse
    import contextlib

    from pvt_np import bench
    from pvt_np.cli import bench as bench_cli

    running: list[str] = []
    calls: list[tuple[str, str, bool, list[str]]] = []

    def fake_spawn(framework: str, config: str, args: argparse.Namespace, step_only: bool = False) -> dict[str, Any]:
        calls.append((framework, config, step_only, list(running)))
        step = {"pvt_np": 100.0, "torch": 80.0}[framework] * (1 + len(running) * (2 if framework == "torch" else 1))
        return {"framework": framework, "config": config, "batch": 8, "size": 32, "forward_ms": 1.0,
                "forward_backward_ms": 2.0, "train_step_ms": step, "peak_memory_mb": 4.0, "img_per_s": 5.0}  # fmt: skip

    @contextlib.contextmanager
    def fake_neighbour(kind: str, threads: int) -> Iterator[None]:
        running.append(kind)
        try:
            yield
        finally:
            running.remove(kind)

    monkeypatch.setattr(bench, "_spawn", fake_spawn)
    monkeypatch.setattr(bench, "_neighbour", fake_neighbour)
    machine = {"cpu": "x", "cores": 2, "threads": 2, "python": "3", "numpy": "2", "torch": "2", "device": "cpu"}
    monkeypatch.setattr(bench, "machine_info", lambda device, threads: machine)
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    out = tmp_path / "bench.json"
    args = parser.parse_args(["--configs", "b0-cifar", "--neighbour", "loop", "pvt_np", "--json", str(out)])
    assert bench.run(args) == 0
    assert calls == [
        ("pvt_np", "b0-cifar", False, []), ("pvt_np", "b0-cifar", True, ["loop"]),
        ("pvt_np", "b0-cifar", True, ["pvt_np"]), ("torch", "b0-cifar", False, []),
        ("torch", "b0-cifar", True, ["loop"]), ("torch", "b0-cifar", True, ["pvt_np"]),
    ]  # fmt: skip
    report = json.loads(out.read_text())
    assert [(b["framework"], b["neighbour"], b["slowdown"]) for b in report["beside"]] == [
        ("pvt_np", "loop", 2.0), ("pvt_np", "pvt_np", 2.0), ("torch", "loop", 3.0), ("torch", "pvt_np", 3.0)
    ]  # fmt: skip
    text = bench.format_report(report)
    assert "b0-cifar       torch     loop           80.0      240.0    3.00x" in text


def test_bench_neighbour_process_starts_busy_and_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop neighbour is running when the context is entered and gone when it ends."""
    from pvt_np import bench

    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    before = set(_children())
    with bench._neighbour("loop", 1):
        during = set(_children()) - before
        assert len(during) == 1
    assert not set(_children()) & during


def _children() -> list[int]:
    """This process's live child processes (Linux /proc)."""
    me = str(os.getpid())
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me and fields[0] != "Z":
                kids.append(int(entry.name))
    return kids
