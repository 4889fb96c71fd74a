"""Execute notebooks/test_distilbert.ipynb end to end, offline on CPU, with tiny random BERT/DistilBERT models."""

from __future__ import annotations

import json
import math
import os

import pytest

import tiny_models

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
NOTEBOOK = os.path.join(REPO, "notebooks", "test_distilbert.ipynb")

TEXT = """\
the man said that he was in the state .
she had not been there for many years , but they made it work .

it was the first time that people could see the world as it is .
we have been here , and you will see that this is good .
"""


def _read():
    import nbformat

    return nbformat.read(NOTEBOOK, as_version=4)


def test_committed_notebook_has_no_outputs_and_a_parameters_cell():
    nb = _read()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), \
        "store the notebook with outputs cleared"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    # the parameters cell comes first and says where the repository is installed from; the next cell installs it,
    # with one pip install, where it is not importable yet (no sys.path edits)
    assert code[0] is tagged[0] and "BOOMERANG = " in code[0].source
    assert "%pip install -q {BOOMERANG}" in code[1].source and "sys.path" not in code[1].source


@pytest.mark.e2e  # executes the whole notebook in a kernel
def test_notebook_runs_offline_on_tiny_models(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    teacher = tiny_models.save_tiny_model(str(tmp_path / "bert"), tiny_models.bert(12), seed=1)
    student = tiny_models.save_tiny_model(str(tmp_path / "distilbert"), tiny_models.distilbert(6), seed=2)
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    out = tmp_path / "out"

    nb = _read()
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    overrides = {
        "TEACHER": teacher, "STUDENT": student, "TEXT_SOURCE": str(text), "NUM_ROWS": 3, "MAX_LENGTH": 16,
        "BATCH_SIZE": 16, "DEVICE": "cpu", "DTYPE": "float32", "OUTPUT_DIR": str(out),
    }
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in overrides.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, injected)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # tiny models: one thread each is fastest, and avoids oversubscribing a shared CPU
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = NotebookClient(nb, kernel_name="python3", timeout=240, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert results["num_rows"] == 3
    by_curve = {c: [r for r in rows if r["curve"] == c] for c in ("distilbert", "boomerang", "naive_pruning")}
    assert len(by_curve["distilbert"]) == 1 and by_curve["distilbert"][0]["depth"] == 6
    # one point per depth for both curves
    assert [r["depth"] for r in by_curve["boomerang"]] == [6, 7, 8, 10, 11, 12]
    assert [r["depth"] for r in by_curve["naive_pruning"]] == [6, 7, 8, 10, 11, 12]
    for r in rows:
        assert math.isfinite(r["pseudo_perplexity"]) and r["pseudo_perplexity"] > 1
        assert r["num_tokens"] == rows[0]["num_tokens"] > 0
    # the two curves meet at BERT; they differ below it (different layers and embeddings)
    assert by_curve["boomerang"][-1]["pseudo_perplexity"] == by_curve["naive_pruning"][-1]["pseudo_perplexity"]
    assert by_curve["boomerang"][0]["pseudo_perplexity"] != by_curve["naive_pruning"][0]["pseudo_perplexity"]
    for a, b in zip(by_curve["boomerang"], by_curve["naive_pruning"]):
        assert a["non_embedding_parameters"] == b["non_embedding_parameters"]
    assert (out / "pseudo_perplexity.png").stat().st_size > 1000

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the notebook shows no figure"
    text_out = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "max |logit difference|" in text_out
    diff = float(text_out.split("max |logit difference| = ")[1].split()[0])
    assert diff < 1e-4
