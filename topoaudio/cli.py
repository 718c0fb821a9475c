"""The `topoaudio` console script (also `python -m topoaudio`): one subcommand per entry point.

    topoaudio train ...      (= torchrun train.py ..., one process)
    topoaudio evaluate ...   topoaudio demo ...   topoaudio readout ...
    topoaudio --help | --version | SUBCOMMAND --help
"""
import sys

# subcommand -> (module whose main(argv) runs it, one line of help); imported only when run, so
# `topoaudio --help` needs no torch
COMMANDS = {
    "train": ("topoaudio.training", "train a topographic model (the settings of train.py)"),
    "evaluate": ("topoaudio.evaluate", "measure checkpoints or your own model: maps, controls, "
                                       "brain scores, report"),
    "demo": ("topoaudio.demo", "draw the cochleagram of a built-in sound, a WAV file or example scenes"),
    "readout": ("topoaudio.readout", "fit a linear readout on a frozen layer of a checkpoint"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: topoaudio {" + ",".join(COMMANDS) + "} [options]   (topoaudio SUBCOMMAND --help)", "",
             "Topographic auditory models: train, measure and inspect them.", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "options:", "  -h, --help  show this help and exit",
              "  --version   print the version and exit"]
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv and argv[0] == "--version":
        from topoaudio import __version__

        print(f"topoaudio {__version__}")
        return
    if not argv or argv[0] not in COMMANDS:
        given = f"unknown subcommand {argv[0]!r}; " if argv else ""
        sys.exit(f"topoaudio: {given}choose one of {', '.join(COMMANDS)} (see topoaudio --help)")
    name, rest = argv[0], argv[1:]
    if name == "train":
        from topoaudio.commandline import sleeping_openmp_waits

        sleeping_openmp_waits()  # before torch is imported
        from topoaudio.training import command

        command(rest, prog="topoaudio train")
        return
    import importlib

    importlib.import_module(COMMANDS[name][0]).main(rest)


if __name__ == "__main__":
    main()
