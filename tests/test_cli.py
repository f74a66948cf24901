"""The pvt-np command: sub-commands are wired, README and CI agree, the benchmark reports."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pvt_np import bench, cli

ROOT = Path(__file__).resolve().parents[1]


def test_every_subcommand_is_offered() -> None:
    """`pvt-np --help` lists each sub-command (each module imports without torch/CuPy side effects)."""
    out = subprocess.run([sys.executable, "-m", "pvt_np", "--help"], capture_output=True, text=True, check=True)
    for name in cli.COMMANDS:
        assert name in out.stdout


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


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


def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Python example in README runs as written (in a fresh directory: it saves a file)."""
    monkeypatch.chdir(tmp_path)
    text = (ROOT / "README.md").read_text()
    start = text.index("```python\n") + len("```python\n")
    code = text[start : text.index("```", start)]
    assert "pvt_np.gradcheck" in code and "model.backward" in code
    exec(compile(code, "README.md", "exec"), {})
