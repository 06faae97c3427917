"""Shared fixtures: an isolated model cache, seeded small data, and the digits zoo models."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import torch

# Never touch the user's cache from tests: models trained here go to a throwaway folder.
_CACHE = tempfile.mkdtemp(prefix="manifold-defense-test-cache-")
os.environ["MANIFOLD_DEFENSE_CACHE"] = _CACHE
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.setdefault("MPLBACKEND", "Agg")
# Two threads at most (the CI machine has two cores); fewer when OMP_NUM_THREADS asks (a shared machine).
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001
    shutil.rmtree(_CACHE, ignore_errors=True)


def _mnist_available() -> bool:
    from manifold_defense import data

    try:
        data.load("mnist", "test", limit=1)
        return True
    except data.DataNotFoundError:
        return False


def pytest_collection_modifyitems(config, items):  # noqa: ARG001
    if any("mnist" in item.keywords for item in items) and not _mnist_available():
        skip = pytest.mark.skip(reason="MNIST not available: set MANIFOLD_DEFENSE_DATA to the folder with mnist.npz")
        for item in items:
            if "mnist" in item.keywords:
                item.add_marker(skip)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="session")
def digits_test():
    from manifold_defense import data

    return data.load("digits", "test")


@pytest.fixture(scope="session")
def digits_train():
    from manifold_defense import data

    return data.load("digits", "train")


@pytest.fixture(scope="session")
def digits_vae():
    from manifold_defense import zoo

    return zoo.get("digits-vae", progress=False)


@pytest.fixture(scope="session")
def digits_classifier():
    from manifold_defense import zoo

    return zoo.get("digits-classifier", progress=False)


@pytest.fixture(scope="session")
def digits_class_vaes():
    from manifold_defense import zoo

    return zoo.get("digits-class-vaes", progress=False)
