"""What a run writes into its directory besides the checkpoints: config.json, metrics.jsonl and metrics.csv,
and the clean-up of the temporaries a killed run leaves behind."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path
from typing import Any

from pvt_np.io.atomic import atomic_write
from pvt_np.training.errors import TrainingError

# What a run writes into its directory (atomic_write's temporaries of these are '.<name>.<random>.tmp').
RUN_FILES = (
    "last.npz", "best.npz", "config.json", "metrics.jsonl", "metrics.csv", "steps.csv", "curves.png", "confusion.png",
)  # fmt: skip


def check_run_directory(out: Path, resume: bool) -> None:
    """A new run never writes over one in ``out``; ``resume`` needs the run's last checkpoint there."""
    last = out / "last.npz"
    if last.exists() and not resume:
        raise TrainingError(
            f"{out} already holds a run ({last.name}); pass --resume to continue it "
            "or choose another --output (nothing was overwritten)"
        )
    if resume and not last.exists():
        raise TrainingError(f"--resume: no checkpoint at {last}")


def remove_stale_temporaries(out: Path) -> None:
    """Remove the temporaries a run killed mid-write (SIGKILL, power loss) left in ``out``; only the run's own."""
    for name in RUN_FILES:
        for stale in out.glob(f".{name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()


def write_config(out: Path, config: dict[str, Any]) -> None:
    """config.json: the run's settings (``asdict`` of its TrainConfig), in a new or existing ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    with atomic_write(out / "config.json", "w") as f:
        json.dump(config, f, indent=2)


def write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl and metrics.csv: one row per epoch."""
    with atomic_write(out / "metrics.jsonl", "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")
    buf = io.StringIO()
    # The columns of every row in order of appearance: a run resumed with another --tta gains or loses one.
    columns = list(dict.fromkeys(k for row in history for k in row))
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    with atomic_write(out / "metrics.csv", "w") as f:
        f.write(buf.getvalue())


__all__ = ["RUN_FILES", "remove_stale_temporaries", "write_config", "write_metrics"]
