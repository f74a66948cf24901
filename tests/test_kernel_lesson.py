"""The kernel lesson (docs/kernels/): every version of every kernel, on the host harness, against the plain ops.

docs/kernels/run.py holds the versions, their inputs and the host build (tests/cuda_harness.py's shim with
shared memory, ``__syncwarp`` and ``atomicAdd``). Here each version runs at small, awkward sizes (rows shorter
and longer than a warp, odd channel counts, strides 2 and 3, padding beyond the kernel) and is compared with
pvt_np.ops.plain at the suite's float32 tolerance; versions said to sum in their predecessor's order must give
its bits; the lesson must end at the kernels pvt_np ships and run every kernel its .cu files hold; and the
host build must catch a warp that skips or diverges at a ``__syncwarp``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import cuda_harness
import numpy as np
import pytest
from helpers import F32_TOL, assert_close

from pvt_np import backend
from pvt_np.ops import cuda

ROOT = Path(__file__).resolve().parents[1]


def _load_lesson() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kernel_lesson", ROOT / "docs" / "kernels" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["kernel_lesson"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


lesson = _load_lesson()
CASES = [(kernel, size) for kernel, sizes in lesson.HOST_SIZES.items() for size in sizes]


def _needs_compiler() -> None:
    if cuda_harness.compiler() is None:
        pytest.skip("no C++ compiler to build the kernels for the host")


@pytest.fixture(scope="module")
def host_versions(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Every version of the lesson compiled for this CPU."""
    _needs_compiler()
    return lesson.HostKernels(tmp_path_factory.mktemp("kernel_lesson"))


def _outputs(version: Any, prob: Any, launch: Any) -> dict[str, np.ndarray]:
    run = prob.setup(version, launch)
    run.reset()
    run.step()
    return {name: np.asarray(a) for name, a in run.outputs().items()}


@pytest.mark.parametrize(("kernel", "size"), CASES, ids=[f"{k}-{'x'.join(map(str, s))}" for k, s in CASES])
def test_every_version_matches_the_plain_op(kernel: str, size: tuple[int, ...], host_versions: Any) -> None:
    """Each version's float32 outputs against plain's float64 ones; a same_bits version equals the one before."""
    prob = lesson.problem(kernel, np, size)
    previous: dict[str, np.ndarray] = {}
    for version in lesson.VERSIONS[kernel]:
        out = _outputs(version, prob, host_versions)
        assert out.keys() == prob.expected.keys()
        for name, expected in prob.expected.items():
            assert_close(out[name], expected, F32_TOL, f"{version.function} {name}")
            if version.same_bits:
                np.testing.assert_array_equal(out[name], previous[name], err_msg=f"{version.function} {name}")
        previous = out


def test_the_lesson_ends_at_the_shipped_kernels_and_runs_every_kernel_it_holds() -> None:
    """Versions numbered 1..k, the last one the float instantiation pvt_np's launcher takes for arrays under 2^31
    elements (from pvt_np/ops/cuda.py, not a copy); every extern "C" kernel of the .cu files is a version."""
    for kernel, versions in lesson.VERSIONS.items():
        assert [v.number for v in versions] == list(range(1, len(versions) + 1))
        assert all(v.kernel == kernel for v in versions)
        last = versions[-1]
        assert last.shipped and last.function in cuda.expressions(kernel)
        assert last.function == (f"{kernel}<float, int>" if kernel in cuda.INDEXED else f"{kernel}<float>")
        assert not versions[0].shipped, f"{kernel}: version 1 is the shipped kernel"
    defined = set()
    for name in set(lesson.FILES.values()):
        text = (lesson.HERE / name).read_text()
        defined |= set(re.findall(r'extern "C" __global__ void (\w+)\(', text))
        assert "template" not in text, f"{name}: the shipped kernels come from pvt_np/ops/cuda.py"
    listed = {v.function for versions in lesson.VERSIONS.values() for v in versions if not v.shipped}
    assert defined == listed


def test_check_reports_wrong_values_and_broken_equal_bits(host_versions: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """run.py's check fails a version whose error is over the tolerance, and one claimed to give its predecessor's
    bits that does not (version 1 again, after version 2, summing in another order)."""
    size = (37, 49)
    assert all(r.ok for r in lesson.check("softmax_rows", np, host_versions, size))
    v1, v2, _ = lesson.VERSIONS["softmax_rows"]
    monkeypatch.setitem(lesson.VERSIONS, "softmax_rows", [v1, v2, dataclasses.replace(v1, same_bits=True)])
    results = lesson.check("softmax_rows", np, host_versions, size)
    assert [r.same_bits for r in results] == [None, None, False]
    assert [r.ok for r in results] == [True, True, False]
    monkeypatch.setitem(lesson.VERSIONS, "softmax_rows", [v1, v2])
    problem = lesson.problem

    def off_by_a_little(kernel: str, xp: Any, size: tuple[int, ...]) -> Any:
        prob = problem(kernel, xp, size)
        return dataclasses.replace(prob, expected={k: e * (1 + 4 * lesson.TOLERANCE) for k, e in prob.expected.items()})

    monkeypatch.setattr(lesson, "problem", off_by_a_little)
    assert [r.ok for r in lesson.check("softmax_rows", np, host_versions, size)] == [False, False]


@pytest.mark.parametrize("mistake", ["no-sync", "sync-inside-if"])
def test_host_build_catches_a_missing_or_divergent_syncwarp(
    mistake: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Layer norm v2 with its shared-memory tree broken: without the __syncwarp between the halvings a lane reads a
    slot before its writer wrote it (wrong sums); with it inside ``if (lane < m)`` the lanes make different syncs,
    which the host build reports."""
    _needs_compiler()
    good = "        if (lane < m) slots[lane] += slots[lane + m];\n        __syncwarp();\n"
    bad = {
        "no-sync": "        if (lane < m) slots[lane] += slots[lane + m];\n",
        "sync-inside-if": "        if (lane < m) { slots[lane] += slots[lane + m]; __syncwarp(); }\n",
    }[mistake]
    text = (lesson.HERE / "layer_norm.cu").read_text()
    assert text.count(good) == 1
    (tmp_path / "layer_norm.cu").write_text(text.replace(good, bad))
    monkeypatch.setattr(lesson, "HERE", tmp_path)
    monkeypatch.setattr(lesson, "FILES", {"layer_norm_forward": "layer_norm.cu"})
    monkeypatch.setattr(lesson, "VERSIONS", {"layer_norm_forward": lesson.VERSIONS["layer_norm_forward"]})
    build = tmp_path / "build"
    build.mkdir()
    launch = lesson.HostKernels(build)
    prob = lesson.problem("layer_norm_forward", np, (9, 49))
    v1, v2, _ = lesson.VERSIONS["layer_norm_forward"]
    assert_close(_outputs(v1, prob, launch)["y"], prob.expected["y"], F32_TOL, "v1, untouched")
    if mistake == "no-sync":
        assert lesson.max_rel_err(_outputs(v2, prob, launch)["y"], prob.expected["y"]) > 1e-2
    else:
        with pytest.raises(RuntimeError, match="layer_norm_forward_v2: the lanes of a warp did not all make the same"):
            _outputs(v2, prob, launch)


def test_run_py_on_the_host_prints_every_version_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    """``run.py --host --kernel softmax_rows_backward``: a table row per version and size, exit status 0."""
    _needs_compiler()
    assert lesson.main(["--host", "--kernel", "softmax_rows_backward"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| softmax_rows_backward |")]
    sizes = lesson.HOST_SIZES["softmax_rows_backward"]
    assert len(rows) == len(sizes) * len(lesson.VERSIONS["softmax_rows_backward"])


def test_run_py_refuses_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    """--repeats below 1 is refused naming the flag; without a GPU the GPU run is refused and points to --host."""
    with pytest.raises(SystemExit) as refused:
        lesson.main(["--host", "--repeats", "0"])
    assert refused.value.code == 2
    assert "--repeats: expected a positive count, got 0" in capsys.readouterr().err
    if backend.gpu_available():
        return
    with pytest.raises(SystemExit) as refused:
        lesson.main([])
    assert refused.value.code == 2
    assert "--host" in capsys.readouterr().err


@pytest.mark.gpu
def test_run_py_on_the_gpu_checks_every_version_at_the_small_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    """``run.py --small --repeats 1`` on a GPU: every version compiled by CuPy, checked, timed once; exit 0."""
    assert lesson.main(["--small", "--repeats", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + sum(len(lesson.HOST_SIZES[k]) * len(v) for k, v in lesson.VERSIONS.items())
