"""Builds topoaudio and its extension topoaudio._C.

The C++ CPU kernels are always built. The CUDA kernels (csrc/cuda/*.cu) are added whenever nvcc is
found (CUDA_HOME or /usr/local/cuda), for sm_90, unless TOPOAUDIO_NO_CUDA=1. DEBUG=1 builds -O0 -g.
TOPOAUDIO_NO_EXTENSION=1 installs the Python package alone (no topoaudio._C: the ops fall back to
their torch and Triton backends, with a warning); the install tests use it to stay fast.
Layout: the Python package in topoaudio/, the Triton kernels in the top-level kernels/ (installed
as topoaudio.kernels through package_dir), the C++/CUDA kernels in csrc/. Install with
`pip install --no-build-isolation -e .` (recommended) or `python setup.py develop`: with setuptools
>= 81 (pinned <82 by torch 2.11) develop hands off to pip's editable install, whose finder honours the
package_dir mapping; older setuptools wrote an egg-link that put only the repository root on
sys.path, so topoaudio.kernels did not import. tests/test_install.py checks both modes and the wheel.
"""
import glob
import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.develop import develop


def find_cuda_home():
    if os.environ.get("TOPOAUDIO_NO_CUDA", "0") == "1":
        return None
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    for home in filter(None, candidates):
        if os.path.exists(os.path.join(home, "bin", "nvcc")):
            return home
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(nvcc)) if nvcc else None


CUDA_HOME = find_cuda_home()
if CUDA_HOME is not None:
    # torch.utils.cpp_extension reads CUDA_HOME when imported, to find nvcc, headers and libcudart.
    os.environ["CUDA_HOME"] = CUDA_HOME
# Only the GPUs we target: without this torch compiles for every architecture it knows.
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


class DevelopWithTheToolsHere(develop):
    """setuptools >= 80 runs `pip install -e .` for `setup.py develop`, by default in an isolated
    build environment that downloads torch again (GBs) to compile against; build against the torch
    of this environment instead, as `pip install --no-build-isolation -e .` does."""

    def run(self):
        os.environ.setdefault("PIP_NO_BUILD_ISOLATION", "0")  # pip reads it inverted: "0" = no isolation
        super().run()


def extensions():
    if os.environ.get("TOPOAUDIO_NO_EXTENSION", "0") == "1":
        return []
    return [extension()]


def extension():
    debug = os.environ.get("DEBUG", "0") == "1"
    cxx_flags = ["-O0", "-g"] if debug else ["-O3", "-fopenmp-simd", "-fno-math-errno"]
    # -fopenmp: ATen's parallel_for is a header template; without it the CPU kernels' one parallel
    # region (csrc/parallel_blocks.h) compiled to a serial loop. At run time the extension shares
    # the libgomp.so.1 that torch has already loaded (same soname), so there is one OpenMP runtime.
    cxx_flags += ["-fopenmp"]
    link_flags = ["-fopenmp"]
    sources = sorted(glob.glob("csrc/*.cpp"))
    if CUDA_HOME is None:
        return CppExtension("topoaudio._C", sources, extra_compile_args={"cxx": cxx_flags},
                            extra_link_args=link_flags)
    nvcc_flags = ["-O0", "-g", "-G"] if debug else ["-O3"]
    nvcc_flags += ["-gencode=arch=compute_90,code=sm_90"]
    return CUDAExtension(
        "topoaudio._C",
        sources + sorted(glob.glob("csrc/cuda/*.cu")),
        define_macros=[("WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=link_flags,
    )


setup(
    name="topoaudio",
    version="0.1.0",
    description="Topographic auditory models: fused cochleagram and spatial-loss ops, models, analyses",
    packages=find_packages(include=["topoaudio", "topoaudio.*"]) + ["topoaudio.kernels"],
    # The Triton kernels live beside csrc/ at the top level, and import as topoaudio.kernels.
    package_dir={"topoaudio.kernels": "kernels"},
    package_data={"topoaudio": ["py.typed"]},
    python_requires=">=3.10",
    install_requires=[
        # the minor version the tests and the GPU machines run (bench/RESULTS.md); patch releases
        # keep the ABI the extension was built against
        "torch>=2.11,<2.12",
        "torchaudio>=2.11,<2.12",
        "numpy<2.4",
        "scipy",  # topoaudio.brain, the analyses, the procedural and scene synthesisers
        "soundfile",
        "matplotlib",
        "tqdm",
    ],
    extras_require={
        "test": ["pytest", "pytest-benchmark"],
        # the speech_music_scenes dataset: espeak-ng and the SoundFont. Its renderer tinysoundfont
        # goes beside it without dependencies (its one dependency, pyaudio, is live playback and
        # needs PortAudio headers): pip install --no-deps tinysoundfont==0.3.7
        "scenes": ["espeakng-loader==0.2.4", "pretty-midi==0.2.11.post0"],
    },
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True), "develop": DevelopWithTheToolsHere},
    # `topoaudio {train,evaluate,demo,readout}`; `python -m topoaudio` is the same
    entry_points={"console_scripts": ["topoaudio=topoaudio.cli:main",
                                      "topoaudio-demo=topoaudio.demo:main"]},
)
