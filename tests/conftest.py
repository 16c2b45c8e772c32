"""Suite-wide fixtures. Every test is offline: W&B never reaches the network."""

import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One tiny CLIP and one set of synthetic videos per configuration for the whole session."""
    return tmp_path_factory.mktemp("stop_cache")
