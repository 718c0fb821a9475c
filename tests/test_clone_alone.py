"""A clone of this repository, with nothing beside it, has what its code, docs and tests refer to:
the science notes the code cites, the golden fixtures, and no test path outside the checkout. CI
alone lays the NH2015 sounds beside the checkout and points TOPOAUDIO_NATSOUND165 at them."""
import os
import pathlib
import re
import shutil
import subprocess

import numpy as np
from conftest import FIXTURES, REPO

CITED_SECTION = re.compile(r"SCIENCE\.md,? sections? (\d+)|SCIENCE\.md (\d+)-(\d+)")
SOURCE_DIRS = ("topoaudio", "kernels", "csrc", "tests", "bench", "docs")
# How a test would reach data outside the checkout.
OUTSIDE_CHECKOUT = ('"../shared', "'../shared", '"shared"', "'shared'", "TOPOAUDIO_SHARED", "shared_dir(")


def project_files(suffixes):
    for directory in SOURCE_DIRS:
        for path in (REPO / directory).rglob("*"):
            if path.suffix in suffixes and "__pycache__" not in path.parts:
                yield path


def cited_sections():
    cited = {}
    for path in project_files({".py", ".md", ".cpp", ".cu", ".h"}):
        for match in CITED_SECTION.finditer(path.read_text(errors="replace")):
            first, low, high = match.groups()
            numbers = [int(first)] if first else range(int(low), int(high) + 1)
            for number in numbers:
                cited.setdefault(number, path.relative_to(REPO))
    return cited


def test_every_cited_science_section_exists_in_this_repository():
    science = REPO / "docs" / "SCIENCE.md"
    assert science.is_file(), "docs/SCIENCE.md is cited by the code but missing"
    headings = {int(n) for n in re.findall(r"^## (\d+)\.", science.read_text(), re.MULTILINE)}
    cited = cited_sections()
    assert cited, "found no 'SCIENCE.md section N' citations: the pattern is out of date"
    missing = {number: str(path) for number, path in cited.items() if number not in headings}
    assert not missing, f"sections cited but not in docs/SCIENCE.md: {missing}"


def test_golden_cochleagram_fixture_ships_inside_the_repository(cochleagram_fixture):
    assert FIXTURES.resolve().is_relative_to(REPO)
    assert (FIXTURES / "README.md").is_file()
    assert cochleagram_fixture["cochleagram"].shape == (4, 211, 390)
    assert cochleagram_fixture["waveforms"].shape == (4, 40000)
    assert np.isfinite(cochleagram_fixture["grad_waveforms"]).all()


def test_no_test_reads_data_beside_the_checkout():
    offenders = [f"{path.name}: {needle}" for path in (REPO / "tests").glob("*.py")
                 if path.name != pathlib.Path(__file__).name
                 for needle in OUTSIDE_CHECKOUT if needle in path.read_text()]
    assert not offenders, f"tests that need ../shared (use TOPOAUDIO_NATSOUND165): {offenders}"


def test_readme_evaluation_example_names_no_path_beside_the_checkout():
    readme = (REPO / "README.md").read_text()
    assert "../shared" not in readme
    assert "TOPOAUDIO_NATSOUND165" in readme and "Norman-Haignere" in readme


def readme_test_command():
    readme = (REPO / "README.md").read_text()
    (line,) = [line for line in readme.splitlines() if line.startswith("make test")]
    return line.split("#")[0].split()


def fake_ci_layout(tmp_path, with_sounds):
    """tmp/repo/.ci/run beside tmp/shared, and a `make` on PATH that records what it was given."""
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy2(REPO / ".ci" / "run", repo / ".ci" / "run")
    if with_sounds:
        (tmp_path / "shared" / "natsound165").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "make").write_text('#!/bin/sh\necho "make $*"\necho "sounds=${TOPOAUDIO_NATSOUND165-unset}"\n')
    (bin_dir / "make").chmod(0o755)
    env = {key: value for key, value in os.environ.items() if key != "TOPOAUDIO_NATSOUND165"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return repo, env


def test_ci_points_the_tests_at_the_sounds_beside_the_checkout(tmp_path):
    repo, env = fake_ci_layout(tmp_path, with_sounds=True)
    out = subprocess.run(["bash", repo / ".ci" / "run"], env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0].split() == readme_test_command()
    assert pathlib.Path(out[1].removeprefix("sounds=")) == (tmp_path / "shared" / "natsound165")


def test_ci_without_the_sounds_runs_the_same_command_and_sets_nothing(tmp_path):
    repo, env = fake_ci_layout(tmp_path, with_sounds=False)
    out = subprocess.run(["bash", repo / ".ci" / "run"], env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == [" ".join(readme_test_command()), "sounds=unset"]
