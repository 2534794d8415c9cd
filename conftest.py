"""Fixtures shared by the tests and the benchmarks."""

import os
from pathlib import Path

import pytest

from regbench.data import GLUE_DIR_ENV

REPO = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    path = Path(os.environ.get(GLUE_DIR_ENV, REPO.parent / "shared" / "glue"))
    if not (path / "RTE" / "train.tsv").is_file():
        pytest.fail(f"GLUE test data not found at {path}; set {GLUE_DIR_ENV}.")
    return path
