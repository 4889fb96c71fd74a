"""Mutation check of tests/test_paper_reference.py: the test must fail when the paper recipe's weight-decay groups
are the improved recipe's (every 1-D parameter exempt: MUTATION=decay) or its document order is the installed
`datasets`' skip + shuffle buffer (MUTATION=shuffle). Exits with pytest's status (1: the test failed, as it must).

    MUTATION=decay PYTHONPATH=. python bench/paper_reference/mutation_check.py
"""

import os
import sys

import pytest
import train.data as td
import train.train as tt

if os.environ["MUTATION"] == "decay":  # the improved recipe's rule: every 1-D parameter exempt
    tt.paper_param_groups = lambda model, wd: tt.param_groups(model, wd, "improved")
else:  # the installed datasets' skip + shuffle buffer
    import datasets

    def installed_order(items, skip, buffer_size, seed):
        docs = list(items)
        ds = datasets.IterableDataset.from_generator(lambda: ({"t": d} for d in docs))
        yield from (r["t"] for r in ds.skip(skip).shuffle(buffer_size=buffer_size, seed=seed))
    td.paper_order = installed_order
sys.exit(pytest.main(["tests/test_paper_reference.py", "-q", "-m", "slow", "-p", "no:cacheprovider"]))
