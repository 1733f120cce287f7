"""Shared fixtures: the repository root on sys.path and the random-weight models, built once."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tests.host.host import Models, build_models  # noqa: E402

# The suite runs tiny models: many small ops, where a second intra-op thread only adds wake-up
# latency, and much of it under load from other processes. One thread keeps it fast either way.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sd1() -> Models:
    return build_models("sd1")


@pytest.fixture(scope="session")
def sdxl() -> Models:
    return build_models("sdxl")


@pytest.fixture(scope="session", params=["sd1", "sdxl"])
def models(request: pytest.FixtureRequest) -> Models:
    """Both block layouts, for tests that must hold for SD1 and SDXL alike."""
    return request.getfixturevalue(request.param)
