"""The three ways to install the project keep its layout: the Python package in topoaudio/, the
Triton kernels in the top-level kernels/, imported as topoaudio.kernels (setup.py's package_dir).

Each mode installs a copy of the source tree into a throw-away venv that sees this environment's
packages (torch, pip, setuptools) but not its topoaudio. TOPOAUDIO_NO_EXTENSION=1 leaves out the C++
extension: compiling it takes minutes and is what `make` already does; the layout is what is tested.
"""
import os
import pathlib
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCES = ["setup.py", "pyproject.toml", "topoaudio", "kernels", "csrc"]
WHERE = ("import topoaudio, topoaudio.kernels, topoaudio.kernels.cochleagram; "
         "print(topoaudio.__file__); print(topoaudio.kernels.__file__)")


def run(command, cwd, env=None):
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def where_it_imports_from(python, cwd):
    """(topoaudio, topoaudio.kernels) as `python` resolves them, run away from any source tree."""
    return [pathlib.Path(line) for line in run([python, "-c", WHERE], cwd=cwd).split()]


@pytest.fixture
def source_copy(tmp_path):
    copy = tmp_path / "src"
    copy.mkdir()
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        else:
            shutil.copy2(source, copy / name)
    return copy


@pytest.fixture
def fresh_venv(tmp_path):
    """A venv with nothing installed that reads this environment's site-packages (a plain path in a
    .pth file: the .pth files there, among them this checkout's editable finder, are not run)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path)
    outer = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    (pathlib.Path(purelib.strip()) / "zz_outer_environment.pth").write_text("\n".join(outer) + "\n")
    return python


def install_env():
    env = dict(os.environ, TOPOAUDIO_NO_EXTENSION="1", PIP_NO_INPUT="1")
    env.pop("PYTHONPATH", None)
    return env


def test_this_environment_imports_the_kernels_from_the_top_level_directory(tmp_path):
    package, kernels = where_it_imports_from(sys.executable, tmp_path)
    assert package == REPO / "topoaudio" / "__init__.py"
    assert kernels == REPO / "kernels" / "__init__.py"


@pytest.mark.slow
def test_pip_editable_install_maps_kernels(source_copy, fresh_venv, tmp_path):
    run([fresh_venv, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", "."],
        cwd=source_copy, env=install_env())
    package, kernels = where_it_imports_from(fresh_venv, tmp_path)
    assert package == source_copy / "topoaudio" / "__init__.py"
    assert kernels == source_copy / "kernels" / "__init__.py"


@pytest.mark.slow
def test_setup_py_develop_maps_kernels(source_copy, fresh_venv, tmp_path):
    # no PIP_NO_BUILD_ISOLATION here: setup.py's develop must itself build with the tools at hand
    env = install_env()
    env.pop("PIP_NO_BUILD_ISOLATION", None)
    run([fresh_venv, "setup.py", "develop", "--no-deps"], cwd=source_copy, env=env)
    package, kernels = where_it_imports_from(fresh_venv, tmp_path)
    assert package == source_copy / "topoaudio" / "__init__.py"
    assert kernels == source_copy / "kernels" / "__init__.py"


@pytest.mark.slow
def test_wheel_holds_the_kernels_as_topoaudio_kernels(source_copy, fresh_venv, tmp_path):
    run([fresh_venv, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", tmp_path / "dist",
         "."], cwd=source_copy, env=install_env())
    (wheel,) = (tmp_path / "dist").glob("topoaudio-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    kernel_files = {f"topoaudio/kernels/{path.name}" for path in (REPO / "kernels").glob("*.py")}
    assert kernel_files and kernel_files <= names
    assert "topoaudio/ops/cochleagram.py" in names
    assert not any(name.startswith("kernels/") for name in names)
    # what a plain install pulls in and offers (issue 22): scipy at run time, the scenes as an extra,
    # a torch range, the console script and `python -m topoaudio`
    archive = zipfile.ZipFile(wheel)
    info = next(name for name in names if name.endswith(".dist-info/METADATA"))
    metadata = archive.read(info).decode()
    assert "Requires-Dist: scipy" in metadata and "Requires-Dist: torch<2.12,>=2.11" in metadata
    assert "Provides-Extra: scenes" in metadata and 'espeakng-loader==0.2.4; extra == "scenes"' in metadata
    entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert "topoaudio = topoaudio.cli:main" in entry_points and "topoaudio/__main__.py" in names
