"""``pvt-np bench``'s frameworks beyond pvt_np and torch eager: pvt_np_graph (the trainer's graph-mode step),
torch_graph (the GPU only) and torch_compile; the defaults per device and the report's rows and headline.
The GPU side of pvt_np_graph and torch_graph is tests/test_gpu.py's."""

from __future__ import annotations

import argparse
import math
from typing import Any

import pytest

from pvt_np import backend, bench, bench_worker, cli
from pvt_np.ops import parallel
from pvt_np.training.capturable import CapturableStep

# A PVT v2 b0 cut down to one block per stage, on 16-pixel images, batch 4: a step in milliseconds on the CPU.
TINY = (
    "pvt_v2_b0",
    {
        "cifar": True,
        "num_classes": 10,
        "depths": (1, 1, 1, 1),
        "embed_dims": (8, 16, 16, 16),
        "num_heads": (1, 1, 1, 1),
    },
    16,
    4,
)


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The tiny config under the name 'tiny'; workers run in this process (given its thread count, so that they
    leave it as it was), and the mask generator is put back after them."""
    monkeypatch.setitem(bench_worker.CONFIGS, "tiny", TINY)
    backend.manual_seed(0)
    yield "tiny"
    backend.manual_seed(0)  # the capturable step keys NumPy's masks from its device key (use_device_key)


def test_pvt_np_graph_runs_the_capturable_step_on_the_cpu(tiny: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU pvt_np_graph is the capturable step called directly (no graph to record), every step of the worker
    through it; its first loss is the eager row's bit for bit (the same weights, batch and forward), and only the
    training step is timed."""
    calls: list[int] = []

    class CountingStep(CapturableStep):
        def __call__(self, x: Any, y: Any) -> None:
            calls.append(x.shape[0])
            super().__call__(x, y)

    monkeypatch.setattr(bench_worker, "CapturableStep", CountingStep)
    threads = parallel.get_num_threads()
    eager = bench_worker.worker("pvt_np", tiny, "cpu", threads, repeats=2, warmup=1)
    backend.manual_seed(0)
    graph = bench_worker.worker("pvt_np_graph", tiny, "cpu", threads, repeats=2, warmup=1)
    assert calls == [4] * (2 + 1 + 2)  # the set-up's two steps, then the warm-up and the timed ones
    assert graph["first_loss"] == eager["first_loss"]
    assert math.isfinite(graph["first_loss"]) and graph["first_loss"] > 0
    assert graph["cuda_graph"] is False and "cuda_graph" not in eager
    assert graph["train_step_ms"] > 0 and graph["img_per_s"] > 0 and graph["peak_memory_mb"] >= 0
    assert "forward_ms" not in graph and "forward_backward_ms" not in graph and "op_share" not in graph
    assert {"forward_ms", "forward_backward_ms", "train_step_ms", "op_share"} <= set(eager)


def test_torch_graph_is_refused_on_the_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    """torch_graph records a CUDA graph: on the CPU the command refuses it before timing anything, naming the flag,
    and the worker refuses it too."""
    assert cli.main(["bench", "--frameworks", "pvt_np", "torch_graph", "--configs", "b0-cifar"]) == 2
    err = capsys.readouterr().err
    assert "--frameworks" in err and "torch_graph" in err and "--device gpu" in err
    with pytest.raises(ValueError, match=r"torch_graph.*'gpu'"):
        bench_worker.worker("torch_graph", "b0-cifar", "cpu", 1, 1, 0)


def _bench_args(*argv: str) -> argparse.Namespace:
    from pvt_np.cli import bench as bench_cli

    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def _result(framework: str, config: str, step_ms: float, **extra: Any) -> dict[str, Any]:
    """What a worker reports, with made-up numbers; graph rows time the training step alone."""
    times = {} if framework.endswith("_graph") else {"forward_ms": 1.0, "forward_backward_ms": 2.0}
    return {"framework": framework, "config": config, "batch": 8, "size": 32, **times, "train_step_ms": step_ms,
            "peak_memory_mb": 100.0, "img_per_s": 8000.0 / step_ms, "first_loss": 2.3, **extra}  # fmt: skip


def test_default_frameworks_follow_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU: pvt_np and torch, as before; GPU: pvt_np's graph-mode step too, interleaved in that order."""
    spawned: list[str] = []

    def fake_spawn(framework: str, config: str, args: Any) -> dict[str, Any]:
        spawned.append(framework)
        return _result(framework, config, 10.0)

    monkeypatch.setattr(bench, "_spawn", fake_spawn)
    monkeypatch.setattr(bench, "machine_info", lambda device, threads: {"device": device})
    monkeypatch.setattr(bench, "format_report", lambda report: "")
    assert bench.run(_bench_args("--configs", "b0-cifar")) == 0
    assert spawned == ["pvt_np", "torch"]
    spawned.clear()
    monkeypatch.setattr(backend, "check_device", lambda device: device)
    assert bench.run(_bench_args("--device", "gpu", "--configs", "b0-cifar")) == 0
    assert spawned == ["pvt_np", "pvt_np_graph", "torch"]
    spawned.clear()
    frameworks = ("torch_compile", "torch_graph", "pvt_np_graph")
    assert bench.run(_bench_args("--device", "gpu", "--configs", "b0-cifar", "--frameworks", *frameworks)) == 0
    assert spawned == list(frameworks)


def _machine(device: str) -> dict[str, Any]:
    return {"cpu": "x", "cores": 1, "threads": 1, "python": "3", "numpy": "2", "torch": "2", "device": device,
            "gpu": "some GPU", "cupy": "14"}  # fmt: skip


def test_report_rows_ratios_against_torch_eager_and_the_headline() -> None:
    """Every framework gets a row; each non-torch row its step and memory ratio against torch eager; graph rows
    show '-' for the forward timings they do not take; the headline takes pvt_np's faster row and names it."""
    steps = {"pvt_np": 20.0, "pvt_np_graph": 5.0, "torch": 10.0, "torch_graph": 4.0, "torch_compile": 8.0}
    results = [
        _result(f, c, ms * (2 if c == "b0-224-bs32" and f == "pvt_np_graph" else 1), **(
            {"cuda_graph": True} if f.endswith("_graph") else {}))
        for c in ("b0-cifar", "b0-224-bs32") for f, ms in steps.items()
    ]  # fmt: skip
    text = bench.format_report({"machine": _machine("gpu"), "results": results})
    lines = text.splitlines()

    def row(config: str, framework: str) -> list[str]:
        return next(line.split() for line in lines if line.split()[:2] == [config, framework])

    assert row("b0-cifar", "torch")[-2:] == ["800", "100"]  # torch eager has no ratio to itself
    assert row("b0-cifar", "pvt_np")[-2:] == ["2.00", "1.00"]
    assert row("b0-cifar", "pvt_np_graph")[2:5] == ["-", "-", "5.0"] and row("b0-cifar", "pvt_np_graph")[-2] == "0.50"
    assert row("b0-cifar", "torch_graph")[-2] == "0.40" and row("b0-cifar", "torch_compile")[-2] == "0.80"
    assert row("b0-224-bs32", "pvt_np_graph")[-2] == "1.00"
    headline = lines[lines.index(next(line for line in lines if line.startswith("headline"))) :]
    assert [line.split() for line in headline[1:3]] == [
        ["b0-cifar", "0.50", "(the", "pvt_np_graph", "row)"],
        ["b0-224-bs32", "1.00", "(the", "pvt_np_graph", "row)"],
    ]
    results[6]["train_step_ms"] = 30.0  # b0-224-bs32's pvt_np_graph now slower than its pvt_np (20 ms)
    text = bench.format_report({"machine": _machine("gpu"), "results": results})
    assert any(line.split() == ["b0-224-bs32", "2.00", "(the", "pvt_np", "row)"] for line in text.splitlines())
    assert "without a CUDA graph" not in text


def test_report_says_when_a_graph_row_ran_without_a_graph() -> None:
    """pvt_np_graph on the CPU (or after a failed recording on the GPU) is timed without a graph: the report says so."""
    results = [_result("pvt_np_graph", "b0-cifar", 5.0, cuda_graph=False), _result("torch", "b0-cifar", 10.0)]
    text = bench.format_report({"machine": _machine("cpu"), "results": results})
    assert "pvt_np_graph b0-cifar: timed without a CUDA graph (nothing to record on the CPU)" in text
    assert "  b0-cifar       0.50  (the pvt_np_graph row)" in text.splitlines()
