"""Copy the experiments command's report (runs/experiments-cpu/REPORT.md and its plots) into this page, between
the report markers, so that the page shows exactly what the run wrote:  python docs/results/experiments/splice.py"""

import os
import re
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RUN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "..", "runs", "experiments-cpu")
START, END = "<!-- report: start -->", "<!-- report: end -->"

report = open(os.path.join(RUN, "REPORT.md"), encoding="utf-8").read()
body = report[report.index("## Seed"):]
for png in re.findall(r"\(([^)]+\.png)\)", body):
    shutil.copy(os.path.join(RUN, png), os.path.join(HERE, png))
page_path = os.path.join(HERE, "README.md")
page = open(page_path, encoding="utf-8").read()
a, b = page.index(START) + len(START), page.index(END)
open(page_path, "w", encoding="utf-8").write(page[:a] + "\n" + body.strip() + "\n" + page[b:])
print("spliced", len(body.splitlines()), "lines")
