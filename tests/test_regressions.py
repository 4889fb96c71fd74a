"""Bugs found by reading the code beside the paper's (issue 16), each reproduced: these fail before the fix."""

import json
import os

import pytest
import torch

import tiny_models

pytestmark = pytest.mark.usefixtures("one_thread")


def test_init_student_leaves_an_in_memory_teachers_requires_grad_alone():
    from boomerang.layer_map import LayerMap
    from train.init_student import init_student

    teacher = tiny_models.build(tiny_models.llama(8))
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = init_student(teacher, LayerMap.from_recipe(8), False, torch.float32, 0)
    for p in student.parameters():
        p.requires_grad_(True)  # as training does
    assert not any(p.requires_grad for p in teacher.parameters())
    # the tensors are still shared (no copy was made)
    assert student.model.layers[1].mlp.up_proj.weight.data_ptr() == teacher.model.layers[2].mlp.up_proj.weight.data_ptr()


def test_build_intermediate_model_with_in_memory_teacher_and_no_tokenizer_returns_none(tmp_path):
    from boomerang.layer_map import LayerMap
    from patching.patch import build_intermediate_model
    from train.init_student import init_student

    teacher = tiny_models.build(tiny_models.llama(8))
    lm = LayerMap.from_recipe(8)
    student = init_student(teacher, lm, False, torch.float32, 0)
    student.save_pretrained(tmp_path / "s")  # weights and student_config.json, no tokenizer
    lm.save(tmp_path / "s")
    model, tok = build_intermediate_model(teacher, str(tmp_path / "s"), 1, dtype=torch.float32)
    assert tok is None and model.config.num_hidden_layers == 6


def _train_args(tmp_path, teacher, *extra):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": "the a of and to in " * 20}) + "\n" for _ in range(10)))
    return ["--teacher_model_name_or_path", teacher, "--save_directory", str(tmp_path / "out"), "--dataset", str(data),
            "--max_length", "16", "--device", "cpu", "--max_steps", "1", *extra]


def test_fsdp_config_is_refused_with_a_message(tmp_path, capsys):
    from train.train import main

    teacher = tiny_models.save_tiny_model(str(tmp_path / "t"), tiny_models.llama(4))
    with pytest.raises(SystemExit):
        main(_train_args(tmp_path, teacher, "--fsdp_config", "fsdp.json"))
    err = capsys.readouterr().err
    assert "--fsdp_config fsdp.json" in err and "--gradient_checkpointing" in err
    assert not (tmp_path / "out").exists()


def test_global_batch_size_and_a_conflicting_accumulation_are_refused(tmp_path, capsys):
    from train.train import main

    teacher = tiny_models.save_tiny_model(str(tmp_path / "t"), tiny_models.llama(4))
    with pytest.raises(SystemExit):
        main(_train_args(tmp_path, teacher, "--global_batch_size", "8", "--per_device_train_batch_size", "2",
                         "--gradient_accumulation_steps", "2"))
    assert "give only one of --global_batch_size and --gradient_accumulation_steps" in capsys.readouterr().err
    # in a config file too; and when both agree there is nothing to refuse
    cfg = tmp_path / "c.yaml"
    cfg.write_text("global_batch_size: 8\nper_device_train_batch_size: 2\ngradient_accumulation_steps: 2\n")
    with pytest.raises(SystemExit):
        main(_train_args(tmp_path, teacher, "--config", str(cfg)))
    cfg.write_text("global_batch_size: 8\nper_device_train_batch_size: 2\ngradient_accumulation_steps: 4\n")
    main(_train_args(tmp_path, teacher, "--config", str(cfg)))
    assert (tmp_path / "out" / "student_config.json").is_file()


@pytest.mark.e2e
def test_main_job_baselines_calibrate_on_the_float32_teacher(tmp_path, monkeypatch):
    """Under the GPU preset (bfloat16 evaluation) ShortGPT's Block Influence must see the float32 teacher, as the
    standalone command does; the main job used to convert the teacher in place first."""
    import baselines.shortgpt as sg
    from reproduce.main_job import main

    seen = []
    real = sg.block_influence

    def spy(model, *a, **k):
        seen.append(next(model.parameters()).dtype)
        return real(model, *a, **k)

    monkeypatch.setattr(sg, "block_influence", spy)
    teacher, data, out = tiny_models.make_world(tmp_path, heldout_docs=120)
    main(["--preset", "gpu", "--teacher_model_name_or_path", teacher, "--data_dir", data, "--output_dir", str(out),
          "--max_steps", "1", "--mc_limit", "2", "--ppl_docs", "2", "--baselines", "shortgpt", "--no_search"])
    assert seen and set(seen) == {torch.float32}
