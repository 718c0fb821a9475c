"""The CPU kernels' one parallel region (csrc/parallel_blocks.h) really runs on several threads,
and the extension shares torch's OpenMP runtime instead of loading a second one."""
import sys

import pytest
import torch

from topoaudio.ops import dispatch


@pytest.fixture
def threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_blocks_are_taken_by_every_thread(threads, n_threads):
    # 200 blocks of 2 ms: every thread of the region starts long before the blocks run out.
    # Compiled without -fopenmp, ATen's header-only parallel_for ran them all on one thread.
    torch.set_num_threads(n_threads)
    assert dispatch.extension().block_worker_threads(200, 0.002) == n_threads


def test_one_block_runs_on_one_thread(threads):
    torch.set_num_threads(2)
    assert dispatch.extension().block_worker_threads(1, 0.0) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps (Linux)")
def test_one_openmp_runtime_in_the_process():
    dispatch.extension()
    with open("/proc/self/maps") as maps:
        runtimes = {line.split()[-1] for line in maps if "libgomp" in line or "libiomp" in line}
    assert len(runtimes) == 1, runtimes
