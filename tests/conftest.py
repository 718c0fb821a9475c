"""Shared test set-up. Triton kernels run under the CPU interpreter when no GPU is present; the
flag must be set before triton is imported, hence here."""
import os
import pathlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = pathlib.Path(__file__).resolve().parents[1]


def shared_dir() -> pathlib.Path:
    """../shared beside the checkout (CI lays it there), or $TOPOAUDIO_SHARED."""
    path = pathlib.Path(os.environ.get("TOPOAUDIO_SHARED", REPO.parent / "shared"))
    if not path.is_dir():
        raise FileNotFoundError(f"shared data not found at {path}; set TOPOAUDIO_SHARED")
    return path


FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(scope="session")
def cochleagram_fixture():
    """The golden cochleagram numbers ship with the project (tests/fixtures/README.md), so a clone
    alone runs the cochleagram tests."""
    import numpy as np

    return dict(np.load(FIXTURES / "cochleagram_reference.npz"))


def poisoned_like(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor of the same shape full of NaN: a kernel that skips an element fails loudly."""
    return torch.full_like(tensor, float("nan"))
