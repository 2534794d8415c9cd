import os
from pathlib import Path

import pytest

from regbench.data import GLUE_DIR_ENV

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    return Path(os.environ.get(GLUE_DIR_ENV, REPO.parent / "shared" / "glue"))
