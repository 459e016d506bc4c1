"""Shared fixtures: paths to the team's shared data (skipped with a reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or skip the test with a reason when it is not there."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not present (the team's shared data is not beside this checkout)")
    return path


@pytest.fixture
def paper_csv() -> Path:
    return shared_file("paper_labelled_prompts_dev.csv")


@pytest.fixture
def hh_rlhf() -> Path:
    return shared_file("hh_rlhf_harmless_base_test.jsonl.gz")


@pytest.fixture(autouse=True, scope="session")
def _private_model_cache(tmp_path_factory):
    """Trained heads go to a per-session folder, never the user's ~/.cache."""
    if "MISALIGN_CACHE" not in os.environ:
        os.environ["MISALIGN_CACHE"] = str(tmp_path_factory.mktemp("misalign-cache"))
    yield
