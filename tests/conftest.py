"""Shared fixtures: the program run offline for both stacks, and their
rendered trees (the same code path as `python -m components.render`)."""
from __future__ import annotations

import pytest

from components.offline import run_stack
from components.render.__main__ import write_tree


@pytest.fixture(scope="session")
def prod_run():
    return run_stack("prod")


@pytest.fixture(scope="session")
def newidr_run(prod_run):
    return run_stack("newidr", stack_outputs={"prod": prod_run.outputs})


@pytest.fixture(scope="session")
def rendered(tmp_path_factory, prod_run, newidr_run):
    """{stack: directory} of the offline render of both stacks."""
    trees = {}
    for run in (prod_run, newidr_run):
        out = tmp_path_factory.mktemp(f"render-{run.stack}")
        write_tree(run, out)
        trees[run.stack] = out
    return trees


@pytest.fixture(scope="session")
def every_feature_run():
    """prod with every switch on, so that every command and script exists."""
    return run_stack("prod", {"bfcacheGeneration": "1", "cachePurgeGeneration": "1", "rsyncEnabled": "true",
                              "jupyterEnabled": "true", "maintenance": "true"})


@pytest.fixture(scope="session")
def rendered_every_feature(tmp_path_factory, every_feature_run):
    out = tmp_path_factory.mktemp("render-prod-every-feature")
    write_tree(every_feature_run, out)
    return out
