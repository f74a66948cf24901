"""The tutorial notebooks: each runs headless from top to bottom, and each is committed clean.

Every ``notebooks/*.ipynb`` is picked up (no list to update when a notebook is added).

* ``test_notebook_runs`` executes a notebook with nbclient in a fresh kernel, working directory
  ``notebooks/``, and fails on the first cell that raises. The kernel is the interpreter running
  pytest (``sys.executable -m ipykernel_launcher``), whatever kernelspecs are installed, so a fresh
  virtual environment with ``pip install -e '.[test]'`` needs no ``ipykernel install``. A cell
  ``QUICK = True`` is injected after the notebook's parameter cell (the code cell tagged
  ``parameters``), so the run stays small even if a notebook was saved with ``QUICK = False``;
  ``PVT_NP_NOTEBOOK_QUICK=0`` injects ``QUICK = False`` instead (the larger runs; minutes each).
  Notebooks derive their other settings from QUICK in a later cell, so the injected value reaches them.
* ``test_notebook_is_clean`` reads the committed file only (fast): executed top to bottom in one
  kernel, an image under every cell that plots, no stored errors, no machine-specific absolute paths,
  no huge outputs, a file size limit, and a parameter cell near the top with ``QUICK = True``.
* ``test_notebook_runs_without_torch`` (slow) reruns the notebooks that handle a missing PyTorch
  (they catch ``ImportError``) with ``torch`` made unimportable.

To re-execute notebooks and save their outputs (what is committed), run this file as a script:
``python tests/test_notebooks.py notebooks/01_overlapping_patch_embedding.ipynb ...`` (all when none given).
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

MAX_FILE_BYTES = 1_500_000  # a committed notebook, outputs and images included
MAX_TEXT_CHARS = 20_000  # one text output (stream or text/plain): no walls of numbers
CELL_TIMEOUT_S = 600  # per cell
PARAMETER_CELL_WITHIN = 3  # the parameter cell is among the first code cells
QUICK_ENV = "PVT_NP_NOTEBOOK_QUICK"

# Machine-specific absolute paths (this checkout's own, home folders, temporary folders).
ABSOLUTE_PATH = re.compile(
    "(" + re.escape(str(NOTEBOOK_DIR.parent)) + r"|/root/|/home/|/Users/|/tmp/|/private/var/|[A-Za-z]:\\\\?Users\\\\?)"
)
# Calls that draw a figure; a cell making one must have stored an image.
PLOT_CALL = re.compile(
    r"\bplt\.(show|figure|subplots|subplot|subplot_mosaic|imshow|matshow|plot|bar|barh|step|scatter|hist|"
    r"semilogy|loglog|pcolormesh|contourf?|quiver)\("
)
IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml")


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


# -- running --------------------------------------------------------------------------------------
class _ThisInterpreter(KernelSpecManager):
    """Resolves every kernel name to an IPython kernel run by this very interpreter."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return KernelSpec(
            argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            display_name="Python 3 (ipykernel)",
            language="python",
            resource_dir="",
        )


def parameter_cell_index(nb: Any) -> int | None:
    """Index of the first code cell tagged 'parameters', or None."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return i
    return None


def execute(nb: Any, quick: bool | None = True, block_torch: bool = False) -> Any:
    """Run ``nb`` in place in a fresh kernel (cwd notebooks/); raises on the first failing cell.

    quick: inject ``QUICK = quick`` after the parameter cell (None: run the notebook as saved).
    block_torch: make ``import torch`` (and timm) raise ImportError, as on a machine without them.
    """
    injected = []
    if quick is not None:
        at = parameter_cell_index(nb)
        if at is None:
            raise AssertionError("no code cell tagged 'parameters' to inject QUICK after")
        cell = nbformat.v4.new_code_cell(f"QUICK = {bool(quick)}  # injected by tests/test_notebooks.py")
        nb.cells.insert(at + 1, cell)
        injected.append(cell)
    if block_torch:
        # A None entry in sys.modules makes the import raise ImportError.
        cell = nbformat.v4.new_code_cell("import sys\n\nsys.modules['torch'] = sys.modules['timm'] = None")
        nb.cells.insert(0, cell)
        injected.append(cell)
    km = KernelManager(kernel_name="python3", kernel_spec_manager=_ThisInterpreter())
    client = nbclient.NotebookClient(
        nb,
        km=km,
        timeout=CELL_TIMEOUT_S,
        allow_errors=False,
        record_timing=False,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()
    for cell in injected:
        nb.cells.remove(cell)
    return nb


def _quick_from_env() -> bool:
    value = os.environ.get(QUICK_ENV, "1").strip().lower()
    if value not in ("0", "1", "true", "false", "yes", "no"):
        raise ValueError(f"{QUICK_ENV} must be 1 or 0, got {value!r}")
    return value in ("1", "true", "yes")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs(path: Path) -> None:
    nb = execute(nbformat.read(path, as_version=4), quick=_quick_from_env())
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors


def _handles_missing_torch(path: Path) -> bool:
    sources = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    return "import torch" in sources and "except ImportError" in sources


TORCH_OPTIONAL = [p for p in NOTEBOOKS if _handles_missing_torch(p)]


@pytest.mark.slow
@pytest.mark.parametrize("path", TORCH_OPTIONAL, ids=_ids(TORCH_OPTIONAL))
def test_notebook_runs_without_torch(path: Path) -> None:
    nb = execute(nbformat.read(path, as_version=4), quick=True, block_torch=True)
    text = "\n".join(_texts(nb))
    assert "torch" in text.lower(), "the notebook should say that the PyTorch comparison was skipped"


# -- committed state ------------------------------------------------------------------------------
def _output_texts(output: Any) -> list[str]:
    """Every text an output stores (not its images)."""
    if output.output_type == "stream":
        return [output.text]
    if output.output_type == "error":
        return [output.ename, output.evalue, *output.traceback]
    texts = []
    for mime, value in output.get("data", {}).items():
        if mime.startswith("text/") or mime.endswith("json"):
            texts.append(value if isinstance(value, str) else json.dumps(value))
    return texts


def _texts(nb: Any) -> list[str]:
    texts = [json.dumps(nb.metadata)]
    for cell in nb.cells:
        texts.append(cell.source)
        for output in cell.get("outputs", []):
            texts.extend(_output_texts(output))
    return texts


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_clean(path: Path) -> None:
    size = path.stat().st_size
    assert size <= MAX_FILE_BYTES, f"{path.name} is {size / 1e6:.2f} MB (limit {MAX_FILE_BYTES / 1e6:.1f} MB)"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]
    assert code, f"{path.name} has no code"

    at = parameter_cell_index(nb)
    assert at is not None, "tag the parameter cell 'parameters' (it holds QUICK = True)"
    assert at in [i for i, _ in code[:PARAMETER_CELL_WITHIN]], "the parameter cell should be near the top"
    assert re.search(r"^QUICK\s*=\s*True\b", nb.cells[at].source, re.M), "the parameter cell must set QUICK = True"

    counts = [c.execution_count for _, c in code]
    assert counts == list(range(1, len(code) + 1)), (
        f"{path.name} was not executed top to bottom in one fresh kernel (execution counts {counts})"
    )
    for i, cell in code:
        where = f"{path.name}, cell {i}"
        for output in cell.outputs:
            assert output.output_type != "error", f"{where} stored an error: {output.ename}: {output.evalue}"
            for text in _output_texts(output):
                assert len(text) <= MAX_TEXT_CHARS, f"{where}: an output of {len(text)} characters"
            for mime in IMAGE_TYPES:
                if mime in output.get("data", {}) and mime != "image/svg+xml":
                    base64.b64decode(output.data[mime], validate=True)
        if PLOT_CALL.search(cell.source):
            images = [o for o in cell.outputs if any(m in o.get("data", {}) for m in IMAGE_TYPES)]
            assert images, f"{where} plots but stored no image"
    for i, cell in code:  # notebooks/ is one level down: '../../' leaves the repository (a development copy)
        assert "../../" not in cell.source, f"{path.name}, cell {i} refers to a path outside the repository"
    for text in _texts(nb):
        match = ABSOLUTE_PATH.search(text)
        context = "" if match is None else text[max(0, match.start() - 40) : match.end() + 40]
        assert match is None, f"{path.name} contains a machine-specific path: ...{context}..."


def main(argv: list[str]) -> int:
    """Re-execute notebooks as saved (their own QUICK) and write them back with their outputs."""
    paths = [Path(a) for a in argv] or NOTEBOOKS
    # One BLAS thread, as the tests run them (tests/conftest.py): the notebooks' matrices are small, and
    # threads waiting on each other on a busy machine can make them many times slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        execute(nb, quick=None)
        nbformat.write(nb, path)
        print(f"executed and saved {path} ({path.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
