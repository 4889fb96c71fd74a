"""Generate with every requested size of a family, from one resident copy of teacher and student.

    python -m patching.generate --teacher embedded:smollm2-135m --student runs/main-cpu/student \\
        [--search runs/main-cpu/search] --sizes 85M,110M,teacher --prompt "The history of the" \\
        [--max_new_tokens 32] [--dtype float32] [--device cpu]

Each size is one member of the family (``patching.resident.ResidentFamily``: the search's frontier with
``--search``, else the paper's fixed order for the teacher's family), built over the resident tensors (no
weight copy) and run greedily with the KV cache. A size is

- a parameter budget (``85M``, ``1.5B``): the best member with at most that many parameters;
- ``teacher`` or ``student``;
- ``d20``: the best member of depth 20;
- ``blocks:3,7,9``: the student with those layers replaced by their teacher blocks;
- a memory budget (``0.3GB``, ``300MB``): the best member whose weights and KV cache (the prompt plus the new
  tokens, batch 1, ``--dtype``) fit.

For each size it prints the member (parameters, depth, parts), its tokens per second and its continuation.
"""

from __future__ import annotations

import argparse
import os
import re
import time

import torch

from boomerang.cli import fail, setup_logging
from boomerang.errors import BoomerangError
from boomerang.families import count_parameters, dtype_from_name
from boomerang.models import load_tokenizer, resolve_model_path
from patching.patch import PatchError, load_plan, parse_param_count
from patching.resident import ResidentFamily


def parse_sizes(text: str) -> list[tuple[str, str, object]]:
    """``"85M,d20,teacher,0.3GB,blocks:3,7,9"`` -> ``[(label, kind, value), ...]``: ``("85M", "params", 85000000)``,
    ``("d20", "depth", 20)``, ``("teacher", "teacher", None)``, ... The numbers after ``blocks:`` run to the next
    size that is not a plain number (or separate them with ``;``: ``blocks:3;7,85M``)."""
    out: list[tuple[str, str, object]] = []
    parts = [p.strip() for p in text.split(",") if p.strip()]
    i = 0
    while i < len(parts):
        p = parts[i]
        low = p.lower()
        if low in ("teacher", "student"):
            out.append((p, low, None))
        elif m := re.fullmatch(r"d(\d+)", low):
            out.append((p, "depth", int(m.group(1))))
        elif low.startswith("blocks:"):
            blocks = [b for b in p.split(":", 1)[1].split(";") if b.strip()]
            while ";" not in p and i + 1 < len(parts) and parts[i + 1].isdigit():  # blocks:3,7,9
                i += 1
                blocks.append(parts[i])
            try:
                out.append((f"blocks:{','.join(b.strip() for b in blocks)}", "blocks", [int(b) for b in blocks]))
            except ValueError:
                raise PatchError(f"--sizes {p!r}: expected blocks:3,7,9 (student layer indices)") from None
        elif re.fullmatch(r"[0-9.]+\s*(gb|gib|mb|mib)", low):
            out.append((p, "memory", p))
        else:
            try:
                out.append((p, "params", parse_param_count(p)))
            except PatchError:
                raise PatchError(f"--sizes {p!r}: expected a parameter count (85M, 1.5B), teacher, student, a depth "
                                 "(d20), blocks:3,7,9 or a memory budget (0.3GB)") from None
        i += 1
    if not out:
        raise PatchError("--sizes is empty: give e.g. 85M,110M,teacher")
    return out


def member_for(family: ResidentFamily, kind: str, value, context_length: int) -> dict:
    if kind == "teacher":
        return family.teacher_entry()
    if kind == "student":
        return family.student_entry()
    if kind == "depth":
        return family.by_depth(value)
    if kind == "blocks":
        return family.by_blocks(value)
    if kind == "memory":
        return family.by_memory(value, 1, context_length)
    return family.by_params(value)


@torch.no_grad()
def generate(model, tokenizer, prompt: str, max_new_tokens: int) -> tuple[str, list[int], float]:
    """Greedy continuation with the KV cache: (text, new token ids, tokens per second)."""
    device = next(model.parameters()).device
    inputs = tokenizer(prompt, return_tensors="pt").to(device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    t0 = time.perf_counter()
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                         pad_token_id=pad, temperature=None, top_p=None, top_k=None)
    dt = time.perf_counter() - t0
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    return tokenizer.decode(new, skip_special_tokens=True), new, len(new) / dt if dt > 0 else float("inf")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m patching.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", "--teacher_model_name_or_path", dest="teacher", required=True)
    p.add_argument("--student", "--student_model_name_or_path", dest="student", required=True,
                   help="student folder (holds student_config.json)")
    p.add_argument("--search", "--plan", dest="search", default=None,
                   help="a search result (search.json or its folder): the family is its frontier")
    p.add_argument("--sizes", required=True, help="comma-separated: 85M, 1.5B, teacher, student, d20, blocks:3;7, 0.3GB")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--dtype", default="float32", help="float32 (default) or bfloat16")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    return p


def main(argv=None) -> list[dict]:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:  # every check before a weight is read
        sizes = parse_sizes(args.sizes)
        if args.max_new_tokens < 1:
            raise PatchError(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
        dtype = dtype_from_name(args.dtype) or torch.float32
        if args.search is not None:
            load_plan(args.search)
        teacher_path = resolve_model_path(args.teacher)
        if not os.path.isdir(resolve_model_path(args.student)):
            raise PatchError(f"--student {args.student}: not a folder")
        tokenizer = load_tokenizer(teacher_path)
        family = ResidentFamily.load(teacher_path, args.student, args.search, dtype)
        context = len(tokenizer(args.prompt)["input_ids"]) + args.max_new_tokens
        members = [(label, member_for(family, kind, value, context)) for label, kind, value in sizes]
    except (BoomerangError, ValueError, FileNotFoundError) as e:  # BoomerangError: every library and stage error
        fail(str(e))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    family.to(device)
    print(f"one resident family: teacher + student {family.resident_bytes() / 2**20:,.1f} MiB of weights "
          f"({args.dtype}); {'the search frontier' if family.plan else family.order + ' order'}, "
          f"{len(family.entries)} members")
    print(f"prompt: {args.prompt!r}\n")
    out = []
    for spec, e in members:
        model = family.model(e)
        text, ids, tps = generate(model, tokenizer, args.prompt, args.max_new_tokens)
        params = count_parameters(model)["total"]
        kl = "" if e.get("calibration_kl") is None else f", calibration KL {e['calibration_kl']:.3f}"
        print(f"[{spec}] {params / 1e6:.2f}M parameters, depth {e['depth']}{kl}, {e['description']}: "
              f"{tps:.1f} tokens/s\n  {text!r}\n")
        out.append({"size": spec, "params": params, "depth": e["depth"], "description": e["description"],
                    "calibration_kl": e.get("calibration_kl"), "tokens_per_s": tps, "text": text, "token_ids": ids})
    return out



if __name__ == "__main__":
    main()
