"""What every command's argument parser shares: one-line usage errors and --help that states each
option's default. Imports nothing of topoaudio (and no torch), so every layer's command can use it
and `--help` stays fast."""
from __future__ import annotations

import argparse
import sys


class DefaultsFormatter(argparse.HelpFormatter):
    """Help lines end with "(default: X)" unless the option is required, has no default (None), is a
    flag, or its help already says what the default is."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.required or action.default in (None, argparse.SUPPRESS) or "default" in text
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                                       argparse._HelpAction, argparse._VersionAction))):
            return text
        default = action.default
        if isinstance(default, (list, tuple)):
            default = " ".join(map(str, default)) or "none"
        elif default == "":
            default = "none"
        return f"{text} (default: {default})" if text else f"(default: {default})"


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (`PROG: message (see --help)`, exit status 1 by
    sys.exit's string), like every other error of the commands, and whose --help shows defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        sys.exit(f"{self.prog}: {message} (see --help)")


def positive_int(text: str) -> int:
    value = int(text)  # argparse turns the ValueError into "invalid positive_int value"
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def sleeping_openmp_waits() -> None:
    """Let the training's OpenMP threads sleep while they wait (OMP_WAIT_POLICY=PASSIVE) unless the
    user chose a policy. Why: on a machine with as many cores as threads, the DataLoader worker that
    synthesises the scenes shares the cores with torch's threads, and a thread spinning at a barrier
    takes the core the worker needs (issue 20: 71 -> 81 clips/s on 2 cores, bench/RESULTS.md).
    OpenMP reads the variable once, when torch loads it: call this before `import torch`."""
    import os

    if "torch" in sys.modules:
        return  # too late to matter; the policy the process started with stays
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
