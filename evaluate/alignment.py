"""Why is a ladder not monotone? Seam alignment and quick ladder perplexity of a student/teacher pair.

A patched model runs student layers up to a *seam* and teacher layers after it (last-k; first-k is
the mirror image), so each size is only as good as the student's hidden state at its seam matches
the teacher's hidden state there. This tool measures, on held-out text and without lm-eval:

1. For every aligned pair of the layer map (the cosine-loss pairs: student ``hidden_states`` index
   j <-> teacher index ``copied[j]``, embedding output and final-norm output included): the mean
   cosine similarity and the relative L2 error ``|h_s - h_t| / |h_t|`` over all tokens.
2. The token perplexity of every size of the ladder (the paper's plan), and of the same sizes with
   one part swapped (``--variants``): ``teacher_embeddings`` (last-k with the teacher's embeddings
   instead of the student's) or ``student_head`` (last-k keeping the student's final norm and head),
   to find which part of the student a size's error comes from.

    python -m evaluate.alignment --teacher_model_name_or_path embedded:smollm2-135m \\
        --student_model_name_or_path runs/main-cpu/student --data ../shared/data/corpus/brown_heldout.jsonl \\
        --docs 25 --max_tokens 512 --variants teacher_embeddings --save_directory runs/main-cpu/alignment

Writes ``alignment.json`` and ``alignment.md`` to ``--save_directory`` when given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time

import torch
from tqdm.auto import tqdm

from boomerang.cli import fail, setup_logging
from boomerang.errors import BoomerangError
from boomerang.io import atomic_write_text, markdown_table
from boomerang.assemble import ModelSource
from boomerang.families import adapter_for_config, order_name
from boomerang.layer_map import LayerMap
from boomerang.models import load_config, load_model, load_tokenizer
from evaluate.bootstrap import step_changes
from evaluate.heldout import encode_file as encode_documents  # the held-out text as the diagnosis reads it
from patching.patch import assemble_plan, check_pair, load_layer_map

VARIANTS = ("teacher_embeddings", "student_head")


@torch.no_grad()
def document_nll(model, batches: list[torch.Tensor]) -> list[float]:
    """Summed next-token NLL of each document."""
    out = []
    for ids in batches:
        ids = ids.to(model.device)
        logits = model(input_ids=ids).logits[0, :-1].float()
        out.append(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item())
    return out


def token_perplexity(model, batches: list[torch.Tensor], nll: list[float] | None = None) -> float:
    """exp(mean next-token NLL) over every predicted token of every document."""
    nll = document_nll(model, batches) if nll is None else nll
    return math.exp(sum(nll) / sum(ids.shape[1] - 1 for ids in batches))


@torch.no_grad()
def pair_alignment(student, teacher, layer_map: LayerMap, batches: list[torch.Tensor]) -> list[dict]:
    """Cosine similarity and relative L2 error of every aligned hidden-state pair, over all tokens."""
    pairs = layer_map.cosine_pairs()
    sums = {p: [0.0, 0.0] for p in pairs}
    count = 0
    for ids in batches:
        ids = ids.to(student.device)
        hs = student(input_ids=ids, output_hidden_states=True).hidden_states
        ht = teacher(input_ids=ids, output_hidden_states=True).hidden_states
        for s, t in pairs:
            a, b = hs[s][0].float(), ht[t][0].float()
            sums[(s, t)][0] += torch.nn.functional.cosine_similarity(a, b, dim=-1).sum().item()
            sums[(s, t)][1] += ((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-6)).sum().item()
        count += ids.shape[1]
    return [{"student_index": s, "teacher_index": t, "cosine": sums[(s, t)][0] / count,
             "relative_l2": sums[(s, t)][1] / count} for s, t in pairs]


def variant_plan(plan, variant: str):
    """The plan with one part taken from the other model (None where that changes nothing)."""
    if variant == "teacher_embeddings":
        return None if plan.embeddings_from == "teacher" else dataclasses.replace(plan, embeddings_from="teacher")
    if variant == "student_head":
        if plan.lm_head_from == "student":
            return None
        return dataclasses.replace(plan, final_norm_from="student", lm_head_from="student")
    raise ValueError(variant)


def ladder_perplexity(teacher_src, student_src, layer_map: LayerMap, batches, patch_first_k_layers: bool,
                      variants: list[str]) -> list[dict]:
    rows = []
    plans = layer_map.ladder(patch_first_k_layers)
    for k, plan in enumerate(tqdm(plans, desc="ladder", unit="size")):
        row = {"k": k, "depth": plan.depth, "replaced_blocks": list(plan.replaced_blocks)}
        model = assemble_plan(teacher_src, student_src, plan).eval()
        row["document_nll"] = document_nll(model, batches)
        row["paper"] = token_perplexity(model, batches, row["document_nll"])
        del model
        for v in variants:
            vplan = variant_plan(plan, v)
            if vplan is None:
                row[v] = None
                continue
            model = assemble_plan(teacher_src, student_src, vplan).eval()
            row[v] = token_perplexity(model, batches)
            del model
        rows.append(row)
    return rows


def alignment_report(teacher, student, layer_map: LayerMap, batches: list[torch.Tensor], *,
                     teacher_name: str, student_name: str, data: str, max_tokens: int,
                     patch_first_k_layers: bool = False, variants=(), ladder: bool = True,
                     perplexities: bool = True) -> dict:
    """The whole diagnosis of a student and its teacher (models in eval mode) as ``alignment.json`` holds it.

    ``perplexities=False`` measures only the aligned pairs (no student, teacher or ladder perplexity):
    what the main job adds beside its sweep, whose perplexities are measured on other cuts.
    """
    report = {
        "teacher": teacher_name, "student": student_name, "data": data, "documents": len(batches),
        "tokens": sum(b.shape[1] for b in batches), "max_tokens": max_tokens,
        "order": order_name(patch_first_k_layers), "variants": list(variants),
        "pairs": pair_alignment(student, teacher, layer_map, batches),
        "teacher_ppl": None, "student_ppl": None, "ladder": [],
        "document_tokens": [b.shape[1] - 1 for b in batches],  # predicted tokens per document
    }
    if not perplexities:
        return report
    report["teacher_ppl"] = token_perplexity(teacher, batches)
    student_nll = document_nll(student, batches)
    report["student_ppl"] = token_perplexity(student, batches, student_nll)
    report["student_document_nll"] = student_nll
    if ladder:
        report["ladder"] = ladder_perplexity(ModelSource(teacher, "teacher"), ModelSource(student, "student"),
                                             layer_map, batches, patch_first_k_layers,
                                             list(variants))
        labels = ["student"] + [f"k={r['k']} ({r['depth']} layers)" for r in report["ladder"]]
        report["steps"] = step_changes(labels, [student_nll] + [r["document_nll"] for r in report["ladder"]],
                                       report["document_tokens"])
    return report


def render(report: dict) -> str:
    ppl = "" if report.get("student_ppl") is None else \
        f" Student perplexity {report['student_ppl']:.1f}, teacher {report['teacher_ppl']:.1f}."
    text = (f"# Seam alignment and ladder perplexity: {report['student']} vs {report['teacher']}\n\n"
            f"Data: {report['data']} ({report['documents']} documents, {report['tokens']} tokens, each cut to "
            f"{report['max_tokens']} tokens).{ppl}\n\n"
            "## Aligned pairs (student hidden_states index <-> teacher index)\n\n"
            + markdown_table([[p["student_index"], p["teacher_index"], f"{p['cosine']:.4f}", f"{p['relative_l2']:.3f}"]
                              for p in report["pairs"]], ["student", "teacher", "cosine", "relative L2"]))
    if not report["ladder"]:
        return text
    variants = report["variants"]
    text += f"\n## Ladder token perplexity ({report['order']} order)\n\n" + markdown_table(
        [[r["k"], r["depth"], f"{r['paper']:.1f}"] + ["" if r[v] is None else f"{r[v]:.1f}" for v in variants]
         for r in report["ladder"]], ["k", "depth", "paper plan"] + variants)
    if report.get("steps"):
        text += ("\n## Each step along the ladder (paper plan)\n\nPerplexity ratio of each model to the one before it, "
                 "with a 95% paired bootstrap interval over documents.\n\n" + markdown_table(
                     [[st["from"], st["to"], f"{st['ratio']:.3f}", "{:.3f}-{:.3f}".format(*st["ci95"]), st["verdict"]]
                      for st in report["steps"]], ["from", "to", "ratio", "95% interval", "verdict"]))
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluate.alignment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher_model_name_or_path", required=True)
    p.add_argument("--student_model_name_or_path", required=True)
    p.add_argument("--data", required=True, help="local .jsonl/.txt/.parquet file or folder of held-out text")
    p.add_argument("--docs", type=int, default=25, help="first N documents (default 25; 0 = all)")
    p.add_argument("--max_tokens", type=int, default=512, help="each document cut to its first N tokens")
    p.add_argument("--patch_first_k_layers", action="store_true", help="first-k order (default last-k)")
    p.add_argument("--variants", default="", help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--no_ladder", action="store_true", help="only the aligned-pair table")
    p.add_argument("--save_directory", default=None)
    p.add_argument("--num_threads", type=int, default=None)
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    setup_logging()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        fail(f"--variants: unknown {bad}; choose from {', '.join(VARIANTS)}")
    if not os.path.exists(args.data):
        fail(f"--data {args.data} not found: pass a local held-out text file (e.g. ../shared/data/corpus/brown_heldout.jsonl)")
    if args.max_tokens < 2:
        fail("--max_tokens must be at least 2")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    start = time.time()
    try:
        t_cfg = load_config(args.teacher_model_name_or_path)
        layer_map = load_layer_map(args.student_model_name_or_path, adapter_for_config(t_cfg).num_layers(t_cfg))
        tokenizer = load_tokenizer(args.teacher_model_name_or_path)
        batches = encode_documents(tokenizer, args.data, args.docs or None, args.max_tokens)
        teacher = load_model(args.teacher_model_name_or_path, dtype=torch.float32).eval()
        student = load_model(args.student_model_name_or_path, dtype=torch.float32).eval()
        teacher_src, student_src = ModelSource(teacher, "teacher"), ModelSource(student, "student")
        check_pair(teacher_src, student_src, layer_map)
    except BoomerangError as e:  # every library and stage error
        fail(str(e))
    report = alignment_report(teacher, student, layer_map, batches, teacher_name=args.teacher_model_name_or_path,
                              student_name=args.student_model_name_or_path, data=args.data,
                              max_tokens=args.max_tokens, patch_first_k_layers=args.patch_first_k_layers,
                              variants=variants, ladder=not args.no_ladder)
    report["seconds"] = round(time.time() - start, 1)
    text = render(report)
    print(text)
    if args.save_directory:
        os.makedirs(args.save_directory, exist_ok=True)
        atomic_write_text(os.path.join(args.save_directory, "alignment.json"), json.dumps(report, indent=2) + "\n")
        atomic_write_text(os.path.join(args.save_directory, "alignment.md"), text)
    return report


if __name__ == "__main__":
    main()
