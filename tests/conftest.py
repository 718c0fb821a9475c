"""Shared test set-up. Triton kernels run under the CPU interpreter when no GPU is present; the
flag must be set before triton is imported, hence here."""
import os
import pathlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = pathlib.Path(__file__).resolve().parents[1]


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


@pytest.fixture(scope="session")
def natsound165_dir() -> pathlib.Path:
    """The 165 NH2015 sounds from $TOPOAUDIO_NATSOUND165 (CI: ../shared/natsound165); the project
    may not ship them, so tests that need the real recordings skip without it."""
    path = os.environ.get("TOPOAUDIO_NATSOUND165")
    if not path:
        pytest.skip("set TOPOAUDIO_NATSOUND165 to a copy of the NH2015 natural sounds (165 wavs, the "
                    "public natsound165 repository of Norman-Haignere, Kanwisher & McDermott 2015)")
    if not pathlib.Path(path).is_dir():
        raise FileNotFoundError(f"TOPOAUDIO_NATSOUND165={path} is not a directory")
    return pathlib.Path(path)


def torchrun_train(cwd, out, settings: dict, steps: int, processes: int = 2):
    """`torchrun train.py` with `processes` CPU ranks (gloo, one thread each) writing to `out`;
    returns the finished process (tests assert on its return code and output)."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", str(REPO / "train.py"), "--steps", str(steps),
               "--out", str(out)]
    command += [f"--{key}={value}" for key, value in settings.items()]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=str(cwd),
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
