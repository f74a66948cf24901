"""The per-step training log of a run (``steps.csv``): loss, accuracy and learning rate as they were read.

It is rewritten whenever ``last.npz`` is (a few thousand short rows: cheap), so a
resumed run reads back exactly the steps its checkpoint holds and its curves
show the whole run, not only the steps of the last process.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pvt_np.io.atomic import atomic_write

__all__ = ["STEP_FIELDS", "read_step_log", "write_step_log"]

logger = logging.getLogger(__name__)

# step: global step (counted from 1); epoch: the epochs done at that step, as a fraction (plots' x axis).
STEP_FIELDS = ("step", "epoch", "loss", "accuracy", "lr")


def write_step_log(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` (dicts with :data:`STEP_FIELDS`) as CSV, atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=STEP_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(path, "w") as f:
        f.write(buf.getvalue())


def read_step_log(path: str | Path, last_step: int) -> list[dict[str, Any]]:
    """The rows of ``path`` up to global step ``last_step``; [] (with a warning) if it is missing or unreadable.

    Rows past ``last_step`` were logged after the checkpoint being resumed (by a process
    killed before its next save): those steps run again, so their old rows are dropped.
    """
    path = Path(path)
    if not path.is_file():
        return []
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != STEP_FIELDS:
                raise ValueError(f"expected the columns {', '.join(STEP_FIELDS)}, got {reader.fieldnames}")
            rows = [
                {"step": int(r["step"]), **{k: float(r[k]) for k in STEP_FIELDS[1:]}}
                for r in reader
                if int(r["step"]) <= last_step
            ]
    except (OSError, ValueError, TypeError, KeyError) as err:
        logger.warning("ignoring the unreadable step log %s (%s); the curves start at the resumed step", path, err)
        return []
    return rows
