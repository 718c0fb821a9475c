"""The `topoaudio` console script: `topoaudio evaluate ...`, `topoaudio demo ...`,
`topoaudio readout ...`."""
import sys

COMMANDS = {"evaluate": "topoaudio.evaluate", "demo": "topoaudio.demo",
            "readout": "topoaudio.readout"}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        sys.exit(f"usage: topoaudio {{{','.join(COMMANDS)}}} [options]")
    import importlib

    importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
