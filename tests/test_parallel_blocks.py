"""The CPU kernels' schedulers (csrc/parallel_blocks.h: run_block_workers' parallel region and
run_block_pool's helper threads) really run on several threads, the extension shares torch's
OpenMP runtime instead of loading a second one, and the spatial loss's bits do not depend on the
thread count."""
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


def pool_threads(blocks, seconds):
    """The probe of run_block_pool (the spatial kernels' scheduler, issue 23)."""
    dispatch.extension()  # registers torch.ops.topoaudio.*
    return torch.ops.topoaudio.block_pool_threads(blocks, seconds)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_pool_blocks_are_taken_by_every_thread(threads, n_threads):
    # the caller and n - 1 helpers; 200 blocks of 2 ms leave every helper time to wake up
    torch.set_num_threads(n_threads)
    assert pool_threads(200, 0.002) == n_threads


def test_pool_runs_one_block_on_the_caller_and_many_short_calls_return(threads):
    torch.set_num_threads(2)
    assert pool_threads(1, 0.0) == 1
    # calls that end before a helper wakes: the caller must not wait for it, nor may a late helper
    # touch a finished call (each call's state lives on its caller's stack)
    for _ in range(2000):
        assert pool_threads(3, 0.0) in (1, 2)


def test_pool_works_in_a_forked_child(threads):
    # the parent's helper threads do not exist in a fork: the child makes its own pool
    import multiprocessing

    torch.set_num_threads(2)
    assert pool_threads(50, 0.001) == 2  # the parent's pool has a helper now
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as workers:
        result = workers.apply_async(pool_threads, (50, 0.001))
        assert result.get(timeout=60) >= 1


def test_pool_serves_concurrent_callers(threads):
    # a second caller while the pool is busy runs its blocks alone: same results, no deadlock
    import threading

    import topoaudio.ops as ops

    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(16, 900, generator=generator)
    positions = torch.rand(900, 2, generator=generator) * 5
    expected = ops.spatial_loss(features, positions, backend="cpp").item()
    results, errors = [], []

    def call():
        try:
            for _ in range(20):
                results.append(ops.spatial_loss(features, positions, backend="cpp").item())
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    callers = [threading.Thread(target=call) for _ in range(3)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=120)
    assert not errors and len(results) == 60
    assert all(value == expected for value in results)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps (Linux)")
def test_one_openmp_runtime_in_the_process():
    dispatch.extension()
    with open("/proc/self/maps") as maps:
        runtimes = {line.split()[-1] for line in maps if "libgomp" in line or "libiomp" in line}
    assert len(runtimes) == 1, runtimes


@pytest.mark.parametrize("kind, radius", [("relative", None), ("relative", 1.0), ("absolute", None)])
def test_cpu_loss_does_not_depend_on_the_thread_count(threads, kind, radius):
    # issue 23: the whole CPU loss (unit vectors, s and the Gram, W z or the pair sums, the
    # backward) runs in dynamic-block regions; every reduction over blocks is summed in block
    # order, so 1, 2 and 3 threads give the same bits. N spans many blocks of each pass (256 units,
    # 64-row weight blocks, 256-unit tiles) with a partial last one.
    import topoaudio.ops as ops

    generator = torch.Generator().manual_seed(23)
    features = torch.randn(24, 1500, generator=generator)
    features[:, 7] = 3.0  # a dead unit
    positions = torch.rand(1500, 2, generator=generator) * 8
    results = []
    for n_threads in (1, 2, 3):
        torch.set_num_threads(n_threads)
        x = features.clone().requires_grad_(True)
        loss = ops.spatial_loss(x, positions, kind=kind, radius=radius, backend="cpp")
        loss.backward()
        results.append((loss.item(), x.grad))
    for value, grad in results[1:]:
        assert value == results[0][0]
        assert torch.equal(grad, results[0][1])
