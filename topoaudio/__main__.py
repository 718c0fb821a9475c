"""`python -m topoaudio ...`: the `topoaudio` console script (topoaudio/cli.py)."""
from topoaudio.cli import main

if __name__ == "__main__":
    main()
