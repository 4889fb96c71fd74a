"""Student initialization: copy a subset of teacher layers (first f, every n-th, last l).

    python -m train.init_student --teacher_model_name_or_path embedded:smollm2-135m \\
        --save_directory runs/smollm2-student-init [--first_layers_to_keep 1 \\
        --alternate_every_n_layers 2 --last_layers_to_keep 2 --random_initialization --dtype float32]

Writes a Hugging Face model folder (config, safetensors weights, the teacher's tokenizer) plus
``student_config.json`` (the paper's ``copied_teacher_layers`` / ``pruned_teacher_layers`` keys).
Embeddings, final norm and LM head are the teacher's; copied layers equal the teacher's exactly.
"""

from __future__ import annotations

import argparse
import logging
import os

import torch

from boomerang.assemble import LayerRef, as_source, assemble
from boomerang.cli import fail, parse_with_config, setup_logging
from boomerang.families import adapter_for_config, dtype_from_name
from boomerang.io import save_model_folder
from boomerang.layer_map import STUDENT_CONFIG_NAME, LayerMap, LayerMapError
from boomerang.models import ModelNotFoundError, load_config, load_model, load_tokenizer, resolve_model_path

log = logging.getLogger("boomerang.init_student")


def plan_student(teacher_config, first_layers_to_keep: int = 1, alternate_every_n_layers: int = 2,
                 last_layers_to_keep: int = 2) -> LayerMap:
    """The layer map for a teacher config (checks the family and the recipe; loads no weights)."""
    return LayerMap.from_recipe(adapter_for_config(teacher_config).num_layers(teacher_config), first_layers_to_keep,
                                alternate_every_n_layers, last_layers_to_keep)


def init_student(teacher, layer_map: LayerMap, random_initialization: bool = False,
                 dtype: torch.dtype | None = None, seed: int = 0):
    """Build the student model from ``teacher`` (a loaded model, a local model folder or a ``LayerSource``).

    Copied layers, embeddings, final norm and head are the teacher's (tensors shared with an in-memory teacher:
    copy the student before training it beside that teacher). With ``random_initialization`` the student has the
    same shape and freshly initialized weights."""
    src = as_source(teacher)
    n_teacher = src.adapter.num_layers(src.config)
    if n_teacher != layer_map.num_teacher_layers:
        raise LayerMapError(f"layer map is for a {layer_map.num_teacher_layers}-layer teacher, got {n_teacher} layers")
    student = assemble(src, [LayerRef(src, t) for t in layer_map.copied_teacher_layers], dtype=dtype)
    if random_initialization:
        torch.manual_seed(seed)
        student = type(student)(student.config).to(dtype).eval()  # real tensors, the family's own initialization
    return student


def teacher_key(student_key: str, layer_map: LayerMap, layer_prefix: str) -> str:
    """The teacher tensor a student tensor starts as (what ``init_student`` copies): student layer ``i`` is teacher
    layer ``copied_teacher_layers[i]``; embeddings, final norm and head keep their names."""
    if not student_key.startswith(layer_prefix):
        return student_key
    index, rest = student_key[len(layer_prefix):].split(".", 1)
    return f"{layer_prefix}{layer_map.copied_teacher_layers[int(index)]}.{rest}"


def save_student(student, tokenizer, layer_map: LayerMap, save_directory: str, overwrite: bool = False,
                 **provenance) -> str:
    """Write the student folder atomically: weights, config, tokenizer and ``student_config.json``."""
    return save_model_folder(student, tokenizer, save_directory, STUDENT_CONFIG_NAME,
                             layer_map.to_student_config(**provenance), overwrite)


def provenance_of(args) -> dict:
    """What student_config.json records of how the student was made (the flags both entry points share)."""
    return dict(teacher_model_name_or_path=args.teacher_model_name_or_path,
                recipe={k: getattr(args, k) for k in ("first_layers_to_keep", "alternate_every_n_layers",
                                                      "last_layers_to_keep")},
                random_initialization=args.random_initialization)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.init_student", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher_model_name_or_path", required=True,
                   help="hub name, local folder, or embedded:smollm2-135m")
    p.add_argument("--save_directory", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--first_layers_to_keep", type=int, default=1)
    p.add_argument("--alternate_every_n_layers", type=int, default=2)
    p.add_argument("--last_layers_to_keep", type=int, default=2)
    p.add_argument("--random_initialization", action="store_true", help="same shape, fresh weights (ablation)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 or auto (the teacher's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --save_directory")
    return p


def main(argv=None) -> str:
    args = parse_with_config(build_parser(), argv)
    setup_logging()
    # Everything that can be wrong is checked before any weights load.
    if os.path.exists(args.save_directory) and not args.overwrite:
        fail(f"--save_directory {args.save_directory} already exists; choose another folder or pass --overwrite")
    try:
        dtype = dtype_from_name(args.dtype)
        teacher_path = resolve_model_path(args.teacher_model_name_or_path)
        layer_map = plan_student(load_config(teacher_path), args.first_layers_to_keep, args.alternate_every_n_layers,
                                 args.last_layers_to_keep)
    except (ModelNotFoundError, LayerMapError, ValueError) as e:
        fail(str(e))
    log.info("teacher %s: %d layers -> student %d layers, copied %s", args.teacher_model_name_or_path,
             layer_map.num_teacher_layers, layer_map.num_student_layers, list(layer_map.copied_teacher_layers))
    try:
        teacher = as_source(teacher_path, name=args.teacher_model_name_or_path)
    except FileNotFoundError:  # no safetensors (e.g. .bin only): load the model itself
        teacher = load_model(teacher_path, dtype=None)
    student = init_student(teacher, layer_map, args.random_initialization, dtype, args.seed)
    save_student(student, load_tokenizer(teacher_path), layer_map, args.save_directory, overwrite=args.overwrite,
                 **provenance_of(args))
    log.info("student written to %s", args.save_directory)
    return args.save_directory


if __name__ == "__main__":
    main()
