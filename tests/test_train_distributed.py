"""Several processes (torchrun, FSDP2 over gloo on CPU) against one: losses, gradient norms, sharded DCP
checkpoints that resume on another number of processes, and per-process loading of the teacher and student."""

import json
import os
import random
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import transformers
from safetensors.torch import load_file

from tiny_models import WORDS, save_tiny_model
from train.train import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ["--max_steps", 3, "--global_batch_size", 4, "--per_device_train_batch_size", 1, "--save_steps", 2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*argv, timeout=300, nproc=2) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={free_port()}",
           *map(str, argv)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert res.returncode == 0, res.stderr[-4000:]
    return res


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread):
    """A tiny Llama teacher wide enough (hidden 64, MLP 256) that tensor bytes, not per-tensor file overhead,
    make up its checkpoints; and a small corpus."""
    root = tmp_path_factory.mktemp("dist")
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=256, num_hidden_layers=8,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True)
    teacher = save_tiny_model(str(root / "teacher"), config)
    r = random.Random(0)
    with open(root / "train.jsonl", "w") as f:
        for _ in range(80):
            f.write(json.dumps({"text": " ".join(r.choice(WORDS) for _ in range(r.randint(3, 40)))}) + "\n")
    return root, teacher


def args(root, teacher, out, *extra):
    return ["--teacher_model_name_or_path", teacher, "--save_directory", str(root / out),
            "--dataset", str(root / "train.jsonl"), "--max_length", "16", "--learning_rate", "1e-2",
            "--logging_steps", "1", "--warmup_ratio", "0.2", "--device", "cpu", *map(str, extra)]


def records(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [r for r in map(json.loads, f) if "loss" in r]


def assert_same_run(reference, other, rel=1e-4):
    """The losses and gradient norms of every step agree to ``rel`` (the earlier torchrun test's tolerance; seen:
    2e-6, the order of the sums over processes). The final weights agree to 1e-5 but for a few in 10,000
    elements, and those to a tenth of one step (lr 1e-2): Adam divides by sqrt(v), so elements whose gradients
    are small and change sign turn that float32 noise into differences of up to 2e-4 (seen; scattered, not whole
    rows as a misplaced shard would be)."""
    a, b = records(reference), records(other)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for x, y in zip(a, b):
        for key in ("loss", "ce", "kl", "cosine", "grad_norm"):
            assert x[key] == pytest.approx(y[key], rel=rel), (key, x["step"])
    wa, wb = load_file(str(reference / "model.safetensors")), load_file(str(other / "model.safetensors"))
    assert set(wa) == set(wb)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-3)
    off = sum(int(((wb[k] - wa[k]).abs() > 1e-5 + 1e-4 * wa[k].abs()).sum()) for k in wa)
    assert off <= 5e-4 * sum(w.numel() for w in wa.values()), off  # seen: 12 of 316,000


@pytest.fixture(scope="module")
def runs(world):
    """One process and two processes (FSDP2), 3 steps each, a checkpoint at step 2."""
    root, teacher = world
    main(args(root, teacher, "one", *STEPS))
    res = torchrun("--module", "train.train", *args(root, teacher, "two", *STEPS))
    assert "fsdp=True" in res.stderr
    return root, teacher


@pytest.mark.distributed
@pytest.mark.e2e  # torchrun: tens of seconds on two cores
def test_two_processes_match_one_in_losses_gradient_norms_and_weights(runs):
    """The gradient norm is what catches a wrong loss scale: FSDP averages gradients over processes, and a loss
    not multiplied back by their number halves every gradient, which Adam (nearly scale-invariant) and therefore
    the losses and weights would hardly show."""
    root, _ = runs
    assert_same_run(root / "one", root / "two")


@pytest.mark.distributed
@pytest.mark.e2e
def test_two_process_checkpoint_is_sharded_and_resumes_on_two_and_on_one(runs):
    root, teacher = runs
    ckpt_two, ckpt_one = root / "two" / "checkpoints" / "step-000002", root / "one" / "checkpoints" / "step-000002"
    state_two, state_one = (json.loads((c / "state.json").read_text()) for c in (ckpt_two, ckpt_one))
    assert state_two["format"] == "dcp"
    # each process advanced only its own slots of the data: gathered, they are the one process's every slot
    assert state_two["data_resume"] == state_one["data_resume"] and len(state_one["data_resume"]["slots"]) == 4
    # Each process wrote its own file holding its shards: together one copy of model + Adam states (what the
    # one-process checkpoint holds in its single file), not one per process.
    whole = os.path.getsize(ckpt_one / "__0_0.distcp")
    parts = sorted(os.path.getsize(p) for p in ckpt_two.glob("*.distcp"))
    assert len(parts) == 2 and sorted(p.name for p in ckpt_two.glob("rng-*.pt")) == ["rng-0.pt", "rng-1.pt"]
    n_params = sum(t.numel() for t in load_file(str(root / "one" / "model.safetensors")).values())
    assert 12 * n_params <= whole < 1.2 * 12 * n_params  # float32 weights, exp_avg, exp_avg_sq: one copy
    assert sum(parts) < 1.25 * whole, (parts, whole)
    assert all(0.3 * whole < p < 0.7 * whole for p in parts), (parts, whole)

    for name in ("two-to-one", "two-to-two"):
        shutil.copytree(root / "two", root / name)
        os.unlink(root / name / "model.safetensors")  # the finished student must come from the resumed run
    main(args(root, teacher, "two-to-one", *STEPS, "--resume"))
    torchrun("--module", "train.train", *args(root, teacher, "two-to-two", *STEPS, "--resume"))
    for name in ("two-to-one", "two-to-two"):
        assert_same_run(root / "one", root / name)


@pytest.mark.distributed
@pytest.mark.e2e
def test_one_process_checkpoint_resumes_on_two(runs):
    root, teacher = runs
    shutil.copytree(root / "one", root / "one-to-two")
    os.unlink(root / "one-to-two" / "model.safetensors")
    torchrun("--module", "train.train", *args(root, teacher, "one-to-two", *STEPS, "--resume"))
    assert_same_run(root / "one", root / "one-to-two")


@pytest.mark.distributed
@pytest.mark.e2e
def test_paper_recipe_on_two_processes_each_tokenizing_its_own_documents_sees_one_process_data(world):
    """The paper's stream: each process tokenizes only its own documents of the global batch (the others are passed
    over), and the token counts are summed over processes: every step's logged token count is one process's, and
    the first step (the same weights, the same one-sequence micro-batches) has one process's losses. Its gradient
    is half of one process's: the paper's recipe sums micro-batch means, so its scale is the accumulation (4 on one
    process, 2 on two; docs/training.md), and the later steps differ by that."""
    root, teacher = world
    paper = [*STEPS, "--recipe", "paper", "--paper_skip_documents", 0, "--paper_shuffle_buffer", 8]
    main(args(root, teacher, "paper-one", *paper))
    torchrun("--module", "train.train", *args(root, teacher, "paper-two", *paper))
    one, two = records(root / "paper-one"), records(root / "paper-two")
    assert [r["tokens"] for r in one] == [r["tokens"] for r in two] and len(one) == 3
    for key in ("loss", "ce", "kl", "cosine"):
        assert two[0][key] == pytest.approx(one[0][key], rel=1e-5), key
    assert two[0]["grad_norm"] == pytest.approx(one[0]["grad_norm"] / 2, rel=1e-4)


# ----------------------------------------------------------------------------- evaluation on uneven splits
def eval_records(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [r for r in map(json.loads, f) if "eval_ce" in r]


@pytest.mark.distributed
@pytest.mark.e2e  # three torchrun launches of 3 processes: a minute or more on two cores
def test_three_processes_with_uneven_evaluation_splits_finish_with_the_one_process_held_out_loss(world):
    """Held-out sequences [r::3] in batches: (4 sequences, batch 1) gives rank 0 two batches and the others one;
    (2 sequences, batch 1) leaves rank 2 none; (5, 2): one batch each, the last holding one sequence. Every rank
    runs as many forwards as the one with most (padding batches whose results are dropped), so the run finishes
    (before, the ranks with fewer batches left rank 0 waiting in an all-gather), with one process's held-out CE.
    The first case stops after step 1 and resumes for step 2."""
    root, teacher = world
    batch = ["--global_batch_size", 3, "--per_device_train_batch_size", 1, "--eval_dataset", root / "train.jsonl"]
    cases = {"4x1": [*batch, "--eval_sequences", 4, "--per_device_eval_batch_size", 1, "--max_steps", 2,
                     "--eval_steps", 1, "--save_steps", 1],
             "2x1": [*batch, "--eval_sequences", 2, "--per_device_eval_batch_size", 1, "--max_steps", 0],
             "5x2": [*batch, "--eval_sequences", 5, "--per_device_eval_batch_size", 2, "--max_steps", 0]}
    for name, flags in cases.items():
        main(args(root, teacher, f"eval-one-{name}", *flags))
        resumable = "--save_steps" in flags
        torchrun("--module", "train.train", *args(root, teacher, f"eval-three-{name}", *flags,
                                                   *(["--stop_at_step", 1] if resumable else [])), nproc=3)
        if resumable:
            torchrun("--module", "train.train", *args(root, teacher, f"eval-three-{name}", *flags, "--resume"),
                     nproc=3)
        one, three = eval_records(root / f"eval-one-{name}"), eval_records(root / f"eval-three-{name}")
        assert [r["step"] for r in one] == [r["step"] for r in three] == ([0, 1, 2] if resumable else [0]), name
        for a, b in zip(one, three):
            assert ("teacher_eval_ce" in a) == ("teacher_eval_ce" in b) == (a["step"] == 0)
            for key in ("eval_ce", "teacher_eval_ce")[:1 + (a["step"] == 0)]:
                assert b[key] == pytest.approx(a[key], rel=1e-5), (name, key)
        assert (root / f"eval-three-{name}" / "student_config.json").is_file()


# ----------------------------------------------------------------------------- checkpoint formats (one process)
def rewrite_in_earlier_format(path, teacher):
    """Turn a DCP checkpoint into the earlier layout (model.pt, optimizer.pt, rng.pt: whole state dicts)."""
    from boomerang.models import load_config
    from train import checkpoint as ckpt
    from train.init_student import plan_student
    from train.train import build_models, build_parser, param_groups

    a = build_parser().parse_args(["--teacher_model_name_or_path", teacher])
    _, student = build_models(a, teacher, plan_student(load_config(teacher)), torch.float32, torch.device("cpu"),
                              fsdp=False)
    optimizer = torch.optim.AdamW(param_groups(student, a.weight_decay), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    ckpt.load_checkpoint(str(path), student, optimizer, scheduler, fsdp=False)
    torch.save(ckpt.model_state(student, fsdp=False), path / "model.pt")
    torch.save(optimizer.state_dict(), path / "optimizer.pt")
    rng = torch.load(path / "rng-0.pt", weights_only=True)
    n = rng["numpy"]  # the earlier files held NumPy's own state tuple (a NumPy array inside)
    rng["numpy"] = (n["name"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["cached_gaussian"])
    torch.save([rng], path / "rng.pt")
    for f in [path / ".metadata", *path.glob("*.distcp"), *path.glob("rng-*.pt")]:
        os.unlink(f)


def test_earlier_checkpoint_format_resumes_and_unfit_or_incomplete_ones_are_refused(world, capsys, caplog):
    root, teacher = world
    main(args(root, teacher, "ref", *STEPS))
    main(args(root, teacher, "part", *STEPS, "--stop_at_step", 2))
    step2 = root / "part" / "checkpoints" / "step-000002"
    for name in ("unfit", "incomplete"):
        shutil.copytree(root / "part", root / name)
    # another layer recipe (4 student layers, not 5): the checkpoint's names tell, before any tensor is read
    with pytest.raises(SystemExit):
        main(args(root, teacher, "unfit", *STEPS, "--resume", "--alternate_every_n_layers", 3))
    err = capsys.readouterr().err
    assert "does not fit this run's student" in err and "--overwrite" in err
    os.unlink(root / "incomplete" / "checkpoints" / "step-000002" / ".metadata")
    with pytest.raises(SystemExit):
        main(args(root, teacher, "incomplete", *STEPS, "--resume"))
    assert "incomplete" in capsys.readouterr().err
    rewrite_in_earlier_format(step2, teacher)
    main(args(root, teacher, "part", *STEPS, "--resume"))
    assert_same_run(root / "ref", root / "part", rel=1e-6)
    assert "checkpoint of the earlier format" in caplog.text


class RunsCode:
    """A pickled object whose unpickling runs a command (what a checkpoint from elsewhere could hold)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_holding_a_pickled_object_is_refused_unread(world, capsys):
    """Every file of a checkpoint is read without unpickling arbitrary objects: the RNG file with
    torch.load(weights_only=True), DCP's pickled .metadata with an unpickler that builds only DCP's own classes."""
    import pickle

    from torch.distributed.checkpoint.metadata import Metadata

    from train import checkpoint as ckpt

    root, teacher = world
    main(args(root, teacher, "pickled", *STEPS, "--stop_at_step", 2))
    step2 = root / "pickled" / "checkpoints" / "step-000002"
    ckpt.set_rng_state(ckpt.safe_load(str(step2 / "rng-0.pt")))  # what the trainer wrote loads safely
    meta = ckpt._safe_reader(str(step2)).read_metadata()
    assert isinstance(meta, Metadata) and any(k.startswith("model.") for k in meta.state_dict_metadata)
    for victim in ("rng-0.pt", ".metadata"):
        case = root / f"pickled-{victim.strip('.')}"
        shutil.copytree(root / "pickled", case)
        marker = case / "code-ran"
        target = case / "checkpoints" / "step-000002" / victim
        if victim == ".metadata":
            meta.storage_meta = RunsCode(marker)  # an object where DCP keeps its own
            target.write_bytes(pickle.dumps(meta))
        else:
            torch.save({"python": RunsCode(marker)}, target)
        with pytest.raises(SystemExit):
            main(args(root, teacher, case.name, *STEPS, "--resume"))
        err = capsys.readouterr().err
        assert "could run code" in err and victim in err, err[-2000:]
        assert not marker.exists()


# ----------------------------------------------------------------------------- per-process loading
# (recipe, random initialization): all three on the first teacher, the first on the others
VARIANTS = (("improved", False), ("paper", False), ("improved", True))


def load_in_two_processes(teachers: list[str]) -> None:
    """Run under torchrun: for every teacher and recipe, the sharded build (each process reads its own rows from
    the safetensors files) holds exactly the tensors of the whole build, shared halves, the head still tied."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from boomerang.models import load_config
    from train.init_student import plan_student
    from train.train import build_models, build_parser

    def tied(model):  # the same Parameter (a DTensor's data_ptr says nothing)
        return model.get_input_embeddings().weight is model.get_output_embeddings().weight

    dist.init_process_group("gloo")
    cpu = torch.device("cpu")
    ids = torch.randint(3, 100, (2, 10), generator=torch.Generator().manual_seed(0))
    for i, teacher in enumerate(teachers):
        layer_map = plan_student(load_config(teacher))
        for recipe, random_init in VARIANTS if i == 0 else VARIANTS[:1]:
            a = build_parser().parse_args(["--teacher_model_name_or_path", teacher, "--recipe", recipe]
                                          + ["--random_initialization"] * random_init)
            what = f"{os.path.basename(teacher)} {recipe} random_initialization={random_init}"
            # a bfloat16 teacher: the improved recipe cuts the student from it, the paper's from the float32 one
            whole = build_models(a, teacher, layer_map, torch.bfloat16, cpu, fsdp=False)
            sharded = build_models(a, teacher, layer_map, torch.bfloat16, cpu, fsdp=True)
            for w, s, role in zip(whole, sharded, ("teacher", "student")):
                expected = {**dict(w.named_parameters()), **dict(w.named_buffers())}
                for name, t in [*s.named_parameters(), *s.named_buffers()]:
                    if isinstance(t, DTensor):
                        assert t.to_local().shape[0] <= -(-t.shape[0] // 2), (what, role, name, "not sharded")
                        t = t.full_tensor()
                    assert t.dtype == expected[name].dtype and torch.equal(t, expected[name]), (what, role, name)
                assert tied(s) == tied(w) == (w.config.tie_word_embeddings is True), (what, role, "tying")
                assert s.training == w.training and (role == "student") == s.training, (what, role)
                assert all(p.requires_grad == (role == "student") for p in s.parameters()), (what, role)
                with torch.no_grad():
                    torch.testing.assert_close(s(ids).logits, w(ids).logits, rtol=1e-5, atol=1e-5)
    dist.destroy_process_group()


@pytest.mark.distributed
def test_each_process_loads_only_its_shards_and_gets_the_whole_load(tmp_path):
    from tiny_models import TINY_DECODERS

    teachers = [save_tiny_model(str(tmp_path / family), TINY_DECODERS[family](8))
                for family in ("llama", "gpt_neox", "gemma3_text")]  # tied; untied + renamed head; scaled embedding
    torchrun(os.path.abspath(__file__), *teachers)


if __name__ == "__main__":  # torchrun tests/test_train_distributed.py TEACHER...
    load_in_two_processes(sys.argv[1:])


@pytest.mark.distributed
def test_the_frozen_teacher_is_resharded_after_its_forward_root_included(world):
    """FSDP2 keeps the root unit gathered after the forward unless told otherwise; the teacher never runs a
    backward, so every unit of it, the root too, must be sharded again after its forward. The student keeps the
    default (its root stays gathered for the backward that follows)."""
    import torch.distributed as dist
    from torch.distributed.fsdp._fully_shard._fsdp_param import ShardedState

    from boomerang.models import load_config
    from train.init_student import plan_student
    from train.train import build_models, build_parser

    root, teacher = world
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        a = build_parser().parse_args(["--teacher_model_name_or_path", teacher])
        t, s = build_models(a, teacher, plan_student(load_config(teacher)), torch.float32, torch.device("cpu"),
                            fsdp=True)
        ids = torch.randint(3, 100, (1, 8))
        with torch.no_grad():
            t(ids)
        s(ids)

        def states(model):
            return {p.sharded_state for m in model.modules() if hasattr(m, "_get_fsdp_state")
                    for g in m._get_fsdp_state()._fsdp_param_groups for p in g.fsdp_params}

        root_states = {p.sharded_state for g in t._get_fsdp_state()._fsdp_param_groups for p in g.fsdp_params}
        assert root_states == states(t) == {ShardedState.SHARDED}
        assert {p.sharded_state for g in s._get_fsdp_state()._fsdp_param_groups for p in g.fsdp_params} == \
            {ShardedState.UNSHARDED}
    finally:
        dist.destroy_process_group()
