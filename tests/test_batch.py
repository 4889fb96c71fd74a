"""train/batch.py: the global batch, per-device batch and accumulation of every preset on 1, 2, 4, 7 and 8
processes; what cannot hold is refused, before any model loads, with numbers that work."""

import glob
import json
import os
import re

import pytest

from boomerang.cli import parse_with_config
from train.batch import BatchError, plan_batch, plan_from_args
from train.train import build_parser, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))
WORLDS = (1, 2, 4, 7, 8)


def suggestions_work(message: str, args, world: int) -> None:
    """Every alternative the message names plans without error."""
    per, glob_ = args.per_device_train_batch_size, args.global_batch_size
    m = re.search(r"--per_device_train_batch_size ([\d or]+) on (\d+) process", message)
    if m:
        for p in map(int, m.group(1).split(" or ")):
            assert plan_batch(p, world, glob_).global_batch == glob_
    m = re.search(r"([\d, ]+) processes at --per_device_train_batch_size (\d+)", message)
    if m:
        for w in map(int, m.group(1).split(",")):
            assert plan_batch(per, w, glob_).global_batch == glob_
    m = re.search(r"--global_batch_size ([\d or]+) \(multiples", message)
    assert m, message
    for g in map(int, m.group(1).split(" or ")):
        assert plan_batch(per, world, g).global_batch == g


@pytest.mark.parametrize("preset", PRESETS, ids=os.path.basename)
def test_every_preset_runs_or_is_refused_with_numbers_that_work(preset):
    args = parse_with_config(build_parser(), ["--config", preset])
    assert "gradient_accumulation_steps" not in args.explicit_settings, "a preset states global and per-device batch"
    outcomes = {}
    for world in WORLDS:
        try:
            plan = plan_from_args(args, world)
        except BatchError as e:
            assert "Would work:" in str(e), str(e)
            suggestions_work(str(e), args, world)
            outcomes[world] = "refused"
            continue
        expected = args.global_batch_size or args.per_device_train_batch_size * args.gradient_accumulation_steps * world
        assert plan.global_batch == expected and plan.world == world  # base.yaml: the flags' defaults
        assert plan.per_device == args.per_device_train_batch_size
        outcomes[world] = plan.accumulation
    assert outcomes[1] != "refused"
    if "cpu" not in os.path.basename(preset):  # the GPU presets run on one node of 1, 2, 4 or 8 GPUs
        assert all(outcomes[w] != "refused" for w in (1, 2, 4, 8)), outcomes


def test_paper_flags_still_work_and_never_contradict():
    assert plan_batch(2, 4, None, 256).global_batch == 2048  # --gradient_accumulation_steps alone
    assert plan_batch(2, 4, 2048, 256).accumulation == 256  # both, agreeing on this world size
    with pytest.raises(BatchError, match="give only one") as e:
        plan_batch(2, 8, 2048, 256)  # agreeing on 4 processes, not on 8
    assert "--gradient_accumulation_steps 128" in str(e.value)
    with pytest.raises(BatchError, match="not a multiple of --per_device_train_batch_size 2 x 7") as e:
        plan_batch(2, 7, 2048)
    assert "1, 2, 4, 8, 16, 32" in str(e.value) and "2044 or 2058" in str(e.value)
    for bad in ((0, 1, 4, None), (1, 1, None, 0), (1, 1, -4, None)):
        with pytest.raises(BatchError):
            plan_batch(*bad)


def test_an_impossible_batch_is_refused_before_any_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; no process group is made before the refusal
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "a b c"}) + "\n")
    with pytest.raises(SystemExit):
        main(["--config", os.path.join(ROOT, "configs", "smollm2-135m-cpu.yaml"), "--teacher_model_name_or_path",
              str(tmp_path / "no-such-teacher-needed"), "--dataset", str(data), "--eval_dataset", "",
              "--save_directory", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert "no-such-teacher" in err  # the teacher is looked up first; with it present the batch is refused:
    from tiny_models import llama, save_tiny_model

    teacher = save_tiny_model(str(tmp_path / "t"), llama(4))
    with pytest.raises(SystemExit):
        main(["--config", os.path.join(ROOT, "configs", "smollm2-135m-cpu.yaml"), "--teacher_model_name_or_path",
              teacher, "--dataset", str(data), "--eval_dataset", "", "--save_directory", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "--global_batch_size 4 is not a multiple of --per_device_train_batch_size 4 x 2" in err
    assert "--per_device_train_batch_size 1 or 2 on 2 process(es)" in err and not (tmp_path / "out").exists()
