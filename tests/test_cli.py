"""The pvt-np command: sub-commands are wired, README's commands and example run, the benchmark reports."""

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pvt_np import bench, bench_worker, cli, ops
from pvt_np.nn import Conv2d, LayerNorm, Linear, Module, Sequential
from pvt_np.optim import SGD
from pvt_np.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def test_every_subcommand_is_offered() -> None:
    """`pvt-np --help` lists each sub-command (each module imports without torch/CuPy side effects)."""
    out = subprocess.run([sys.executable, "-m", "pvt_np", "--help"], capture_output=True, text=True, check=True)
    for name in cli.COMMANDS:
        assert name in out.stdout


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_help_strings_leave_defaults_to_the_formatter(command: str) -> None:
    """Every option says what it does; none writes its own '(default: ...)', which the help formatter adds."""
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[command]
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert options
    for action in options:
        assert action.help, f"{action.option_strings[0]} has no help"
        assert "default" not in action.help.lower(), f"{action.option_strings[0]}: {action.help}"


def test_readme_gives_the_command_ci_runs() -> None:
    """CI runs README's test command verbatim, so the front door cannot rot."""
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    marker = ci_lines.index("# README: tests")
    command = ci_lines[marker + 1].strip()
    assert "pytest" in command
    assert command in (ROOT / "README.md").read_text()


def test_bench_reports_both_frameworks(tmp_path: Path) -> None:
    """One tiny benchmark run: both frameworks timed in subprocesses, ratios and op shares reported."""
    out = tmp_path / "bench.json"
    code = cli.main(
        ["bench", "--configs", "b0-cifar", "--repeats", "1", "--warmup", "0", "--threads", "1", "--json", str(out)]
    )
    assert code == 0
    report = json.loads(out.read_text())
    by_framework = {r["framework"]: r for r in report["results"]}
    assert set(by_framework) == {"pvt_np", "torch"}
    for r in by_framework.values():
        for key in ("forward_ms", "forward_backward_ms", "train_step_ms", "peak_memory_mb", "img_per_s"):
            assert r[key] > 0, (r["framework"], key, r[key])
    shares = by_framework["pvt_np"]["op_share"]
    assert {"linear", "gelu", "layer_norm", "attention"} <= set(shares)
    assert any(k.startswith("conv2d depthwise") for k in shares)
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-6)
    text = bench.format_report(report)
    assert "step ratio" in text and "b0-cifar" in text


class LinearNorm(Module):
    """A layer the profiler has never heard of: a Linear, then a LayerNorm."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.fc = Linear(in_features, out_features)
        self.norm = LayerNorm(out_features)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.norm(self.fc(x))

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return self.fc.backward(self.norm.backward(dout))


def _profile(model: Module, x: np.ndarray) -> dict[str, float]:
    optimizer = SGD(model.parameters(), lr=0.1)

    def model_step() -> None:
        optimizer.zero_grad()
        y = model(x)
        model.backward(np.ones_like(y))

    return bench_worker._profile_ops(model_step, optimizer.step, lambda: None, 2)


def test_profile_observes_the_ops_a_new_layer_calls() -> None:
    """The profile is an observer on the op dispatchers: a new layer is profiled as it runs, nothing patched."""
    x = np.random.default_rng(0).standard_normal((3, 5, 6)).astype(np.float32)
    shares = _profile(LinearNorm(6, 4), x)
    assert set(shares) == {"linear", "layer_norm", "optimizer", "other (glue, reshapes, residual adds)"}
    assert all(v >= 0 for v in shares.values()) and sum(shares.values()) == pytest.approx(1.0, abs=1e-9)


def test_profile_splits_depthwise_and_dense_convs() -> None:
    """Each conv call is labelled from its arguments (forward) or its cache (backward)."""
    x = np.random.default_rng(0).standard_normal((2, 7, 6, 4)).astype(np.float32)
    convs = Sequential(
        Conv2d(4, 4, 3, padding=1, groups=4, channels_last=True),  # depthwise
        Conv2d(4, 6, 1, channels_last=True),  # dense
        Conv2d(6, 6, 3, groups=2, channels_last=True),  # grouped, not depthwise: dense kernels
    )
    calls: list[ops.OpCall] = []
    with ops.observe(calls.append):
        convs.backward(np.ones_like(convs(x)))
    assert [(c.phase, bench_worker._op_label(c)) for c in calls] == [
        ("forward", "conv2d depthwise"),
        ("forward", "conv2d dense"),
        ("forward", "conv2d dense"),
        ("backward", "conv2d dense"),
        ("backward", "conv2d dense"),
        ("backward", "conv2d depthwise"),
    ]
    assert {"conv2d depthwise", "conv2d dense", "optimizer"} <= set(_profile(convs, x))


def test_readme_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Python example in README runs as written, each on its own (in a fresh directory: one saves a file)."""
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.MULTILINE | re.DOTALL)
    assert len(blocks) >= 2
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "convert", "flops", "bench"])
def test_help_shows_defaults_but_not_empty_ones(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main([command, "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: [])" not in text
    if command == "train":
        defaults = TrainConfig()
        assert f"(default: {defaults.epochs})" in text and f"(default: {defaults.batch_size})" in text
