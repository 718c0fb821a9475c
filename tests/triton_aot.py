"""Compile every Triton kernel ahead of time for a Hopper GPU (sm_90), without a GPU.

The CPU interpreter runs kernels as Python and accepts code that compiled Triton rejects (a
non-constexpr global read inside a kernel passed it once, and failed on the first GPU run).
Compiling to a cubin here catches those errors in CI. Run in a fresh process without
TRITON_INTERPRET (under the interpreter, @triton.jit returns objects that cannot be compiled):

    python tests/triton_aot.py      -> prints one line per kernel, exits 1 on the first failure
"""
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from topoaudio.kernels import cochleagram as coch  # noqa: E402
from topoaudio.kernels import cochleagram_fast as fast  # noqa: E402
from topoaudio.kernels import spatial_loss as spatial  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

HOPPER = GPUTarget("cuda", 90, 32)


def spatial_cases(float_type: str, precision: str):
    """(kernel, signature, constexprs) of the three spatial-loss kernels in one dtype."""
    ptr = f"*{float_type}"
    sizes = {"n_units": "i32", "batch": "i32"}
    tiles = dict(PRECISION=precision, TILE=spatial.TILE, BLOCK_K=spatial.BLOCK_K)
    yield (spatial._weighted_sum_kernel,
           {"z_ptr": ptr, "p_ptr": ptr, "wz_ptr": ptr, "wsum_ptr": "*fp64", "w2sum_ptr": "*fp64",
            **sizes, "j_per_split": "i32"},
           dict(PRECISION=precision, BLOCK_I=spatial.WEIGHTED_SUM["BLOCK_I"],
                BLOCK_J=spatial.WEIGHTED_SUM["BLOCK_J"], BLOCK_B=spatial.WEIGHTED_SUM["BLOCK_B"]))
    yield (spatial._pair_sums_kernel,
           {"z_ptr": ptr, "p_ptr": ptr, "box_ptr": ptr, "part_ptr": "*fp64", **sizes,
            "n_tiles": "i32", "param_ptr": "*fp64"},
           tiles)
    yield (spatial._pair_grad_kernel,
           {"z_ptr": ptr, "p_ptr": ptr, "box_ptr": ptr, "grad_ptr": ptr, **sizes, "n_tiles": "i32",
            "param_ptr": "*fp64"},
           dict(tiles, BLOCK_B=spatial.BLOCK_B))


def cochleagram_cases():
    sizes = {"length": "i32", "window": "i32", "stride": "i32", "n_frames": "i32"}
    block_f, block_j = coch._FORWARD_TILE
    for compress in (True, False):
        yield (coch._envelope_forward_kernel,
               {"z_ptr": "*fp32", "taps_ptr": "*fp32", "out_ptr": "*fp32", "env_ptr": "*fp32",
                **sizes, "power": "fp32", "offset": "fp32"},
               dict(COMPRESS=compress, BLOCK_F=block_f, BLOCK_J=block_j))
    yield (coch._envelope_backward_kernel,
           {"z_ptr": "*fp32", "taps_ptr": "*fp32", "g_ptr": "*fp32", "gz_ptr": "*fp32", **sizes},
           dict(MAX_COVER=12, BLOCK_T=coch._BACKWARD_TILE))


def fast_cochleagram_cases(float_type: str):
    """The fast mode's six kernels in one dtype (the tables are int64)."""
    ptr, table = f"*{float_type}", {"table_ptr": "*i64"}
    yield (fast._gather_bands_kernel,
           {"spec_ptr": ptr, "filt_ptr": ptr, "scale_ptr": ptr, **table, "band_ptr": ptr,
            "n_rows": "i32", "n_bins_in": "i32"}, dict(BLOCK=fast.BLOCK))
    yield fast._magnitude_kernel, {"z_ptr": ptr, "env_ptr": ptr, "n": "i64"}, dict(BLOCK=fast.BLOCK)
    yield (fast._weight_fold_kernel,
           {"spec_ptr": ptr, "response_ptr": ptr, "inv_size_ptr": ptr, **table, "fold_ptr": ptr,
            "n_rows": "i32", "n_channels": "i32", "period": "i32", "max_folds": "i32"},
           dict(BLOCK_P=fast.BLOCK_P, BLOCK_FOLDS=fast.BLOCK_FOLDS))
    yield (fast._unfold_weight_kernel,
           {"grad_fold_ptr": ptr, "response_ptr": ptr, "inv_size_ptr": ptr, **table,
            "grad_spec_ptr": ptr, "n_rows": "i32", "n_channels": "i32", "period": "i32"},
           dict(BLOCK=fast.BLOCK))
    yield (fast._magnitude_backward_kernel,
           {"z_ptr": ptr, "grad_env_ptr": ptr, "grad_z_ptr": ptr, "n": "i64"}, dict(BLOCK=fast.BLOCK))
    yield (fast._gather_band_gradients_kernel,
           {"grad_band_ptr": ptr, "filt_ptr": ptr, "scale_ptr": ptr, **table, "cover_ptr": "*i64",
            "grad_spec_ptr": ptr, "n_rows": "i32", "n_bins_in": "i32"},
           dict(MAX_COVER=8, BLOCK_BINS=fast.BLOCK_BINS))


def main() -> int:
    cases = [*cochleagram_cases(), *fast_cochleagram_cases("fp32"), *fast_cochleagram_cases("fp64"),
             *spatial_cases("fp32", "tf32x3"), *spatial_cases("fp64", "ieee64")]
    for kernel, signature, constexprs in cases:
        names = kernel.arg_names
        missing = [name for name in names if name not in signature and name not in constexprs]
        if missing:
            print(f"FAIL {kernel.__name__}: no signature for {missing}")
            return 1
        full = {name: signature.get(name, "constexpr") for name in names}
        source = triton.compiler.ASTSource(fn=kernel, signature=full, constexprs=constexprs)
        try:
            compiled = triton.compile(source, target=HOPPER)
        except Exception as error:  # the compiler's own message says what is wrong
            print(f"FAIL {kernel.__name__} {constexprs}: {type(error).__name__}: {error}")
            return 1
        print(f"ok   {kernel.__name__} {constexprs}: {len(compiled.asm['cubin'])} bytes of sm_90 code")
    return 0


if __name__ == "__main__":
    sys.exit(main())
