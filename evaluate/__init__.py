"""Evaluation of boomerang models with lm-evaluation-harness: one size, or a whole sweep of sizes.

    python -m evaluate.evaluate --teacher_model_name_or_path T --student_model_name_or_path S \\
        --save_directory D --sweep --tasks local_ppl:../shared/data/corpus/brown_heldout.jsonl
    python -m evaluate.plot D [OTHER_DIR ...]

Python API (see ``evaluate/evaluate.py``): ``evaluate_model``, ``run_sweep``, ``SweepPoint``,
``boomerang_points``, ``resolve_tasks``.

A note on the name. This package is called ``evaluate``, like Hugging Face's ``evaluate`` library,
which a few lm-evaluation-harness tasks import (mbpp, humaneval, squadv2, xquad, ...). When this
package is the one on ``sys.path`` (running from the repository root), it stands in for Hugging
Face's library too: the library's folder is appended to this package's ``__path__`` (so
``import evaluate.loading`` and the library's own absolute imports find its modules), and any
attribute this package does not define (``evaluate.load``, ``evaluate.Metric``, ...) is taken
from the library's ``__init__``, executed lazily in this namespace on first use. Where the
library is not installed those attributes raise an ``AttributeError`` that says how to install it
(``pip install evaluate``). The two sets of module names do not overlap (ours: ``evaluate.evaluate``,
``evaluate.plot``, ``evaluate.results``, ``evaluate.tasks``).
"""

from __future__ import annotations

import importlib.machinery
import os
import sys

_OURS = os.path.dirname(os.path.abspath(__file__))


def _find_hf_evaluate() -> str | None:
    """The folder of Hugging Face's ``evaluate`` package on ``sys.path`` (not this one), or None."""
    here_parent = os.path.dirname(_OURS)
    for entry in sys.path:
        base = os.path.abspath(entry or os.getcwd())
        if base == here_parent:
            continue
        spec = importlib.machinery.PathFinder.find_spec("evaluate", [base])
        if spec is not None and spec.submodule_search_locations:
            for loc in spec.submodule_search_locations:
                if os.path.abspath(loc) != _OURS and os.path.isfile(os.path.join(loc, "__init__.py")):
                    return os.path.abspath(loc)
    return None


_HF_DIR = _find_hf_evaluate()
if _HF_DIR is not None and _HF_DIR not in __path__:  # noqa: F821 (package __path__)
    __path__.append(_HF_DIR)  # noqa: F821

_hf_loaded = False
_OWN_SUBMODULES = {"evaluate", "plot", "results", "tasks"}


def _load_hf_namespace() -> None:
    """Run Hugging Face evaluate's ``__init__`` in this module's namespace (once)."""
    global _hf_loaded
    if _hf_loaded or _HF_DIR is None:
        return
    _hf_loaded = True
    init = os.path.join(_HF_DIR, "__init__.py")
    with open(init) as f:
        code = compile(f.read(), init, "exec")
    ns = globals()
    keep = {k: ns[k] for k in ("__doc__", "__file__", "__name__", "__path__", "__spec__", "__getattr__")}
    exec(code, ns)  # noqa: S102 (the installed library's own code)
    ns.update(keep)


class _HFSubmoduleHook:
    """Importing one of the library's submodules (``evaluate.loading``) first runs the library's
    ``__init__``, as it would without this package: its modules expect that import order."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        if not _hf_loaded and _HF_DIR is not None and fullname.startswith(__name__ + "."):
            top = fullname.split(".")[1]
            if top not in _OWN_SUBMODULES and (os.path.isdir(os.path.join(_HF_DIR, top))
                                               or os.path.isfile(os.path.join(_HF_DIR, top + ".py"))):
                _load_hf_namespace()
        return None  # the ordinary finders do the import


if _HF_DIR is not None and not any(isinstance(f, type) and f.__name__ == "_HFSubmoduleHook" for f in sys.meta_path):
    sys.meta_path.insert(0, _HFSubmoduleHook)


def __getattr__(name: str):
    if (name.startswith("__") and name.endswith("__")) or name in _OWN_SUBMODULES:
        raise AttributeError(name)  # let the import system load our own submodules
    if _HF_DIR is not None and not _hf_loaded:
        _load_hf_namespace()
        if name in globals():
            return globals()[name]
    if _HF_DIR is None:
        raise AttributeError(
            f"module 'evaluate' (boomerang's evaluation package) has no attribute {name!r}. Hugging Face's "
            "'evaluate' library, which some lm-eval tasks use, is not installed: pip install evaluate"
        )
    raise AttributeError(f"module 'evaluate' has no attribute {name!r}")
