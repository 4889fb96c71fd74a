"""Memory and switching time of one resident family (``patching.resident.ResidentFamily``).

    .venv/bin/python bench/resident_family.py [--teacher embedded:smollm2-135m] [--student DIR] \\
        [--search runs/main-cpu/search] [--work_dir runs/bench-resident-family] [--dtype float32] [--tokens 128]

Three fresh processes, each reporting its peak resident memory (``ru_maxrss``):

- ``baseline``: the interpreter and the imports only;
- ``pair``: teacher and student loaded (the family's weights, nothing built), each run once (one forward pass over
  ``--tokens`` tokens: the weights are memory-mapped from their files and resident only once read, and the
  activations every process below also holds);
- ``family``: teacher and student loaded, then every member of the family (the search's frontier with
  ``--search``, else the paper's order for the teacher's family) built and run once (one forward pass over
  ``--tokens`` tokens), then every member asked for again (kept: a switch costs no build) and each run once more.

Printed: the peak RSS of each, the family's weights (teacher + student tensors), the sum of the members'
weights were each a separate model (its parameters x the bytes of ``--dtype``: what saving every member as
its own model holds), and the time to switch members: building a member the first time (median and
largest) and taking a kept one. The check: the family's peak RSS within the pair's plus 10% of the family's
weights plus 32 MiB (members add modules and small buffers, never weights; the allocator keeps some slack).

The student (when ``--student`` is not given) is made once by ``python -m train.init_student``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import ROOT, ensure_student, json_child  # noqa: E402  (no torch: the children measure themselves)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


def child(args) -> None:
    """One measurement, printed as one JSON line."""
    import torch

    from boomerang.families import dtype_from_name
    from patching.resident import ResidentFamily

    if args.child == "baseline":
        print(json.dumps({"what": "baseline", "peak_rss": _peak_rss_bytes()}))
        return
    dtype = dtype_from_name(args.dtype)
    t0 = time.perf_counter()
    family = ResidentFamily.load(args.teacher, args.student, args.search, dtype)
    load_s = time.perf_counter() - t0
    out = {"what": args.child, "weights_bytes": family.resident_bytes(), "load_s": load_s,
           "members": len(family.entries), "params": [e["params"] for e in family.entries]}
    ids = torch.randint(3, family.teacher.config.vocab_size, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    if args.child == "pair":  # both read once: a model loaded from safetensors is resident only where it was read
        with torch.no_grad():
            family.teacher(input_ids=ids)
            family.student(input_ids=ids)
    if args.child == "family":
        build, switch, run = [], [], []
        with torch.no_grad():
            for again in (False, True):
                for e in family.entries:
                    t = time.perf_counter()
                    model = family.model(e)
                    (switch if again else build).append(time.perf_counter() - t)
                    t = time.perf_counter()
                    model(input_ids=ids)
                    run.append(time.perf_counter() - t)
        bpv = torch.finfo(dtype).bits // 8
        out.update(build_s=build, switch_s=switch, run_s=run,
                   separate_bytes=sum(e["params"] * bpv for e in family.entries),
                   weights_after_bytes=family.resident_bytes())
    out["peak_rss"] = _peak_rss_bytes()
    print(json.dumps(out))


def run_child(args, what) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", what, "--teacher", args.teacher,
           "--student", args.student, "--work_dir", args.work_dir, "--dtype", args.dtype, "--tokens", str(args.tokens)]
    if args.search:
        cmd += ["--search", args.search]
    return json_child(str(what), cmd)


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def ms(xs: list[float]) -> str:
    xs = sorted(xs)
    return f"median {1000 * xs[len(xs) // 2]:.2f} ms, largest {1000 * xs[-1]:.2f} ms"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="embedded:smollm2-135m")
    p.add_argument("--student", default=None, help="student folder (default: made in --work_dir by train.init_student)")
    p.add_argument("--search", default=None, help="a search result (search.json or its folder): the family is its "
                                                  "frontier (default: the paper's order for the teacher's family)")
    p.add_argument("--work_dir", default=os.path.join(ROOT, "runs", "bench-resident-family"))
    p.add_argument("--dtype", default="float32")
    p.add_argument("--tokens", type=int, default=128, help="tokens of the forward pass each member runs")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.student is None:
        args.student = os.path.join(args.work_dir, "student")
    if args.child is not None:
        child(args)
        return 0
    os.makedirs(args.work_dir, exist_ok=True)
    ensure_student(args.teacher, args.student)
    base, pair, fam = (run_child(args, w) for w in ("baseline", "pair", "family"))
    weights = pair["weights_bytes"]
    print(f"teacher {args.teacher}, student {args.student}, {args.dtype}, family: "
          f"{'frontier of ' + args.search if args.search else 'the fixed order'}, {fam['members']} members "
          f"({fam['params'][0] / 1e6:.2f}M to {fam['params'][-1] / 1e6:.2f}M parameters); one fresh process per row")
    rows = [("interpreter + imports", base["peak_rss"]), ("teacher + student loaded, each run once", pair["peak_rss"]),
            (f"+ every member built and run once ({args.tokens} tokens), then again", fam["peak_rss"])]
    print("| process | peak RSS MiB | above the imports MiB |\n|---|---|---|")
    for name, rss in rows:
        print(f"| {name} | {mib(rss)} | {mib(rss - base['peak_rss'])} |")
    print(f"family's weights (teacher + student tensors): {mib(weights)} MiB; unchanged after every member was built: "
          f"{fam['weights_after_bytes'] == weights}")
    print(f"the members as separate models (parameters x {args.dtype} bytes, summed): {mib(fam['separate_bytes'])} MiB "
          f"({fam['separate_bytes'] / weights:.1f}x the family's weights)")
    print(f"switching: a member built the first time {ms(fam['build_s'])}; a kept member {ms(fam['switch_s'])}; "
          f"a forward pass {ms(fam['run_s'])}")
    extra = fam["peak_rss"] - pair["peak_rss"]
    limit = 0.1 * weights + 32 * 2**20
    ok = extra <= limit and fam["weights_after_bytes"] == weights
    print(f"every member resident adds {mib(extra)} MiB of peak RSS over the pair (limit 10% of the weights + 32 MiB, "
          f"{mib(limit)} MiB): {'ok' if ok else 'EXCEEDED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
