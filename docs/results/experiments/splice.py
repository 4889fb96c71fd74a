"""Copy the experiments command's report (RUN/REPORT.md and its plots; RUN defaults to runs/experiments-cpu) into
this page, between the report markers, so that the page shows exactly what the run wrote:

    python docs/results/experiments/splice.py [RUN]

A run that holds only some seeds replaces those seeds' sections and keeps the page's others: each "## Seed N"
section is replaced whole, and in "## Time" each seed's line and the "This run" line are replaced."""

import os
import re
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))

from boomerang.io import atomic_write_text  # noqa: E402

START, END = "<!-- report: start -->", "<!-- report: end -->"


def sections(text: str) -> dict[str, str]:
    """The report's "## " sections by heading, in order, each with its heading line."""
    parts = re.split(r"(?m)^(?=## )", text.strip())
    return {p.splitlines()[0]: p.strip() for p in parts if p.startswith("## ")}


def paragraphs(text: str) -> dict[str, str]:
    """The Time section's paragraphs keyed by what they describe ("Seed 0", "This run")."""
    out = {}
    for p in re.split(r"\n\s*\n", text.strip())[1:]:  # [0] is the heading
        m = re.match(r"(Seed \d+|This run)", p)
        out[m.group(1) if m else p] = p.strip()
    return out


def _order(label: str) -> tuple[bool, int]:
    """Seeds in numeric order, then the section or paragraph about time ("## Time", "This run") last."""
    seed = re.match(r"(?:## )?Seed (\d+)", label)
    return label in ("## Time", "This run"), int(seed.group(1)) if seed else -1


def merge(old: str, new: str) -> str:
    """OLD's report block updated with NEW's sections (see the module's docstring)."""
    merged = sections(old) if old.strip() else {}
    for head, body in sections(new).items():
        if head == "## Time" and head in merged:
            paras = {**paragraphs(merged[head]), **paragraphs(body)}
            paras = {k: paras[k] for k in sorted(paras, key=_order)}
            body = "\n\n".join([head] + list(paras.values()))
        merged[head] = body
    return "\n\n".join(merged[h] for h in sorted(merged, key=_order))


def main(run: str) -> None:
    report = open(os.path.join(run, "REPORT.md"), encoding="utf-8").read()
    body = report[report.index("## Seed"):]
    for png in re.findall(r"\(([^)]+\.png)\)", body):
        shutil.copy(os.path.join(run, png), os.path.join(HERE, png))
    page_path = os.path.join(HERE, "README.md")
    page = open(page_path, encoding="utf-8").read()
    a, b = page.index(START) + len(START), page.index(END)
    atomic_write_text(page_path, page[:a] + "\n" + merge(page[a:b], body) + "\n" + page[b:])
    print("spliced", len(body.splitlines()), "lines of", run)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "..", "runs", "experiments-cpu"))
