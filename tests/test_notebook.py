"""Executes notebooks/walkthrough.ipynb end to end: every cell must run without an error."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "walkthrough.ipynb"


def test_walkthrough_notebook_runs(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel runs in a scratch directory; the notebook writes its run under a temporary directory.
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) == 5  # front pairs, front 3D, history, features, ensembles
    text = "".join(output.get("text", "") for output in outputs)
    assert "generation 3:" in text and "their majority vote:" in text
    assert "report.md" in text
