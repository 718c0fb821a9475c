"""docs/API.md's examples run as doctests (issue 22, item 4): every public class and function has
one there, and a change that breaks one fails here, in `make test`."""
import doctest
import pathlib
import re

import pytest

import topoaudio.analysis
import topoaudio.brain
import topoaudio.models
import topoaudio.ops

API = pathlib.Path(__file__).resolve().parents[1] / "docs" / "API.md"
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def api_examples() -> doctest.DocTest:
    """Every >>> example of docs/API.md, in order, sharing one namespace. A code fence ends an
    example's expected output, as a blank line does in a plain doctest file."""
    text = re.sub(r"^```.*$", "", API.read_text(), flags=re.M)
    return doctest.DocTestParser().get_doctest(text, {"__name__": "api_md"}, "docs/API.md", str(API), 0)


def test_every_example_of_the_api_page_runs():
    pytest.importorskip("matplotlib").use("Agg")  # the figure examples draw off-screen
    report = []
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    runner.run(api_examples(), out=report.append)
    results = runner.summarize(verbose=False)
    assert results.attempted > 100, results
    assert results.failed == 0, "".join(report)


@pytest.mark.parametrize("package", [topoaudio.ops, topoaudio.analysis, topoaudio.brain, topoaudio.models])
def test_every_public_name_has_an_example(package):
    examples = "\n".join(example.source for example in api_examples().examples)
    skip = {"dispatch", "reference"}  # submodules: their functions are shown by name
    missing = [name for name in package.__all__ if name not in skip
               and not re.search(rf"\b{name}\b", examples)]
    assert not missing, f"{package.__name__}: no example in docs/API.md for {missing}"
