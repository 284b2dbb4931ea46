"""LightningLite in a real Jupyter kernel: the class defined in a cell, ddp_notebook, cells run again.

A notebook's classes live in the kernel's ``__main__``, which a spawned process cannot import, so
the notebook strategy forks. The notebook below is executed by nbclient in a fresh ipykernel
(the kernel of this Python), the way a user runs it: train on 2 forked processes, run the same
cell again, one process after that, ddp_spawn (refused with the fix named), a rank that raises,
and one more run after the failed one. The integration session installs ipykernel and nbclient
and sets ``LITE_REQUIRE_NOTEBOOK=1``, so that there a missing install fails instead of skipping.
"""

from __future__ import annotations

import ast
import os
import textwrap

import pytest

try:
    import nbformat
    from nbclient import NotebookClient
except ImportError:
    if os.environ.get("LITE_REQUIRE_NOTEBOOK") == "1":
        raise
    pytest.skip("pip install ipykernel nbclient nbformat to run these", allow_module_level=True)

CELLS = [
    """
    import torch
    from torch import nn
    from lite_facade import LightningLite

    class Lite(LightningLite):
        def run(self, steps=5):
            torch.manual_seed(0)
            model = nn.Linear(4, 1)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            model, optimizer = self.setup(model, optimizer)
            for _ in range(steps):
                loss = model(torch.ones(8, 4)).pow(2).mean()
                optimizer.zero_grad()
                self.backward(loss)
                optimizer.step()
            return self.global_rank, self.world_size, self.all_gather(loss.detach()).tolist()
    """,
    'print("A", Lite(strategy="ddp_notebook", devices=2, accelerator="cpu").run())',
    'print("B", Lite(strategy="ddp_notebook", devices=2, accelerator="cpu").run(steps=3))',
    'print("C", Lite(accelerator="cpu").run(steps=1))',
    """
    try:
        Lite(strategy="ddp_spawn", devices=2, accelerator="cpu").run()
    except Exception as err:
        print("D", type(err).__name__, err)
    """,
    """
    class Failing(LightningLite):
        def run(self):
            if self.global_rank == 1:
                raise ValueError("boom on rank 1")
            return "no error"

    try:
        Failing(strategy="ddp_notebook", devices=2, accelerator="cpu").run()
    except Exception as err:
        print("E", type(err).__name__, err)
    """,
    'print("F", Lite(strategy="ddp_notebook", devices=2, accelerator="cpu").run(steps=1))',
]


@pytest.mark.timeout(400)
def test_ddp_notebook_in_a_real_kernel_runs_again_and_survives_a_failed_run() -> None:
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(textwrap.dedent(cell).strip()) for cell in CELLS]
    )
    # "python3" is the kernel of the Python running this test (jupyter_client's native kernel).
    NotebookClient(notebook, kernel_name="python3", timeout=240).execute()  # raises on a cell's error
    out = {}
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output["output_type"] == "stream", output
            text = output["text"]
            if text[:2] in ("A ", "B ", "C ", "D ", "E ", "F "):  # what one print wrote, whole
                out[text[0]] = text[2:].strip()
    assert sorted(out) == list("ABCDEF"), out
    for key in "ABF":  # rank 0's (rank, world size, every rank's last loss)
        rank, world, losses = ast.literal_eval(out[key])
        assert (rank, world) == (0, 2) and len(losses) == 2 and losses[0] == losses[1], (key, out[key])
    assert ast.literal_eval(out["C"])[:2] == (0, 1)
    assert out["D"].startswith("LiteConfigurationError")
    assert "cannot start processes from an interactive session" in out["D"] and "ddp_fork" in out["D"]
    assert out["E"].startswith("ProcessFailedError rank 1 raised ValueError: boom on rank 1")
