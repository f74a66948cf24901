"""Threads are configured at run time in one place (parallel.configure_threads), whatever the import order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
