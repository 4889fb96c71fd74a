"""train.init_student: bad input fails before any weights load, with a message that says what to change."""

import json

import pytest

import tiny_models
from train.init_student import main


@pytest.fixture()
def teacher_dir(tmp_path):
    return tiny_models.save_tiny_model(str(tmp_path / "teacher"), tiny_models.llama(8))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--first_layers_to_keep", "6", "--last_layers_to_keep", "4"], "teacher has only 8"),
        (["--alternate_every_n_layers", "0"], "alternate_every_n_layers must be an integer >= 1"),
        (["--first_layers_to_keep", "-1"], "first_layers_to_keep must be an integer >= 0"),
        (["--first_layers_to_keep", "0"], "drops teacher layer 0"),
    ],
)
def test_bad_recipe_fails_before_loading(teacher_dir, tmp_path, capsys, flags, message, monkeypatch):
    import boomerang.assemble

    monkeypatch.setattr(boomerang.assemble, "assemble", lambda *a, **k: pytest.fail("weights were loaded"))
    with pytest.raises(SystemExit):
        main(["--teacher_model_name_or_path", teacher_dir, "--save_directory", str(tmp_path / "s"), *flags])
    assert message in capsys.readouterr().err


def test_missing_teacher_and_existing_output(tmp_path, teacher_dir, capsys):
    with pytest.raises(SystemExit):
        main(["--teacher_model_name_or_path", str(tmp_path / "nope"), "--save_directory", str(tmp_path / "s")])
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    with pytest.raises(SystemExit):
        main(["--teacher_model_name_or_path", teacher_dir, "--save_directory", str(tmp_path / "taken")])
    assert "already exists" in capsys.readouterr().err


def test_random_initialization_same_shape_fresh_weights(tmp_path, teacher_dir):
    import torch

    from boomerang.models import load_model

    a = main(["--teacher_model_name_or_path", teacher_dir, "--save_directory", str(tmp_path / "copy")])
    b = main(["--teacher_model_name_or_path", teacher_dir, "--save_directory", str(tmp_path / "rand"),
              "--random_initialization"])
    ma, mb = load_model(a), load_model(b)
    sa, sb = ma.state_dict(), mb.state_dict()
    assert sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)
    assert not torch.equal(sa["model.layers.0.mlp.up_proj.weight"], sb["model.layers.0.mlp.up_proj.weight"])
    cfg = json.loads((tmp_path / "rand" / "student_config.json").read_text())
    assert cfg["random_initialization"] is True and cfg["copied_teacher_layers"] == [0, 2, 4, 6, 7]


def test_hub_name_offline_fails_fast_with_advice(monkeypatch, tmp_path):
    import time

    from boomerang.models import ModelNotFoundError, resolve_model_path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError, match="embedded:smollm2-135m"):
        resolve_model_path("Qwen/Qwen3-4B-Base")
    assert time.monotonic() - start < 10
