"""The report of ``pvt-np bench``: the machine it ran on and the table of its results (see :mod:`pvt_np.bench`)."""

from __future__ import annotations

import os
import platform
import statistics
from typing import Any

import numpy as np

__all__ = ["format_report", "machine_info"]


def machine_info(device: str, threads: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "device": device,
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    if device == "gpu":
        import cupy

        info["cupy"] = cupy.__version__
        info["gpu"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
        info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        info["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
        info["tf32"] = False
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


_REPORTED = ("forward_ms", "forward_backward_ms", "train_step_ms", "img_per_s", "peak_memory_mb")
# pvt_np's rows: the headline ratio (pvt_np against torch eager) takes the faster of them, and says which
PVT_NP_ROWS = ("pvt_np", "pvt_np_graph")


def _ratios(values: list[float]) -> str:
    """One ratio as is; several as their median and range."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def _cell(value: float | None, width: int, digits: int) -> str:
    """A number right-aligned in ``width``, or '-' where the row does not measure it (a graph row's forward)."""
    return f"{'-':>{width}}" if value is None else f"{value:{width}.{digits}f}"


def format_report(report: dict[str, Any]) -> str:
    """The table of ``report`` (what :func:`pvt_np.bench.run` collects): each framework's medians, its step and
    memory ratios against torch eager of the same round, the headline ratio (pvt_np's faster row against torch
    eager), the neighbour table and pvt_np's op shares."""
    m = report["machine"]
    lines = [
        f"machine: {m['cpu']} ({m['cores']} cores), {m['threads']} threads, device {m['device']}"
        + (f" [{m.get('gpu')}]" if m["device"] == "gpu" else ""),
        f"versions: python {m['python']}, numpy {m['numpy']}, torch {m['torch']}"
        + (f", cupy {m.get('cupy')}" if m["device"] == "gpu" else ""),
        "",
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in report["results"]:
        groups.setdefault((r["config"], r["framework"]), []).append(r)
    rounds = max((len(rows) for rows in groups.values()), default=1)
    width = 10 if rounds == 1 else 18
    fw = max([7] + [len(framework) for _, framework in groups])
    if rounds > 1:
        lines.insert(-1, f"medians of {rounds} interleaved rounds; ratios: median of the rounds' ratios (min-max)")
    lines.append(
        f"{'config':<14} {'framework':<{fw}} {'fwd ms':>8} {'fwd+bwd ms':>11} {'step ms':>8} "
        f"{'img/s':>7} {'peak MB':>8} {'step ratio':>{width}} {'mem ratio':>{width}}"
    )
    by_key: dict[tuple[str, str], dict[str, Any]] = {}  # the first good result of each pair (its op shares)
    step_ratios: dict[tuple[str, str], list[float]] = {}
    notes: list[str] = []
    for (config, framework), rows in groups.items():
        for r in rows:
            if "error" in r:
                lines.append(f"{config:<14} {framework:<{fw}} failed: {r['error'].strip().splitlines()[-1]}")
        good = [r for r in rows if "error" not in r]
        if not good:
            continue
        by_key[config, framework] = good[0]
        med = {k: statistics.median(r[k] for r in good) if k in good[0] else None for k in _REPORTED}
        ratio = mem_ratio = ""
        if framework != "torch":
            torch_by_round = {r.get("round", 1): r for r in groups.get((config, "torch"), []) if "error" not in r}
            pairs = [(r, torch_by_round[r.get("round", 1)]) for r in good if r.get("round", 1) in torch_by_round]
            if pairs:
                step_ratios[config, framework] = [a["train_step_ms"] / b["train_step_ms"] for a, b in pairs]
                ratio = _ratios(step_ratios[config, framework])
                mem_ratio = _ratios([a["peak_memory_mb"] / max(b["peak_memory_mb"], 1e-9) for a, b in pairs])
        forward, forward_backward = _cell(med["forward_ms"], 8, 1), _cell(med["forward_backward_ms"], 11, 1)
        lines.append(
            f"{config:<14} {framework:<{fw}} {forward} {forward_backward} {med['train_step_ms']:8.1f} "
            f"{med['img_per_s']:7.0f} {med['peak_memory_mb']:8.0f} {ratio:>{width}} {mem_ratio:>{width}}"
        )
        if "cuda_graph" in good[0] and not all(r["cuda_graph"] for r in good):
            why = "nothing to record on the CPU" if m["device"] != "gpu" else "the recording failed"
            notes.append(f"{framework} {config}: timed without a CUDA graph ({why})")
    headline = []
    for config in dict.fromkeys(c for c, _ in groups):
        rows = [(statistics.median(step_ratios[config, f]), f) for f in PVT_NP_ROWS if (config, f) in step_ratios]
        if rows:
            best, framework = min(rows)
            headline.append(f"  {config:<14} {best:.2f}  (the {framework} row)")
    if headline:
        lines += ["", "headline step ratio, pvt_np's faster row (pvt_np or pvt_np_graph) against torch eager:"]
        lines += headline
    if notes:
        lines += ["", *notes]
    if report.get("beside"):
        bw = max(fw, 9)
        lines += [
            "",
            "beside a neighbour process: training step ms (median), slowdown = beside / quiet",
            f"{'config':<14} {'framework':<{bw}} {'neighbour':<9} {'quiet ms':>9} {'beside ms':>10} {'slowdown':>8}",
        ]
        lines.extend(
            f"{b['config']:<14} {b['framework']:<{bw}} {b['neighbour']:<9} {b['quiet_ms']:9.1f} {b['beside_ms']:10.1f} "
            f"{b['slowdown']:7.2f}x"
            for b in report["beside"]
        )
    for r in by_key.values():
        if "op_share" in r:
            lines.append("")
            lines.append(f"pvt_np {r['config']}: share of the training step per op type")
            lines.extend(f"  {k:<40} {v * 100:5.1f}%" for k, v in r["op_share"].items())
    return "\n".join(lines)
