"""Train a topographic auditory model.

    torchrun [--nproc_per_node=K] train.py [--config FILE.json] [--steps N] [--out DIR] [--resume]
                                           [--key value ...]

With no arguments: cochcnn with the whole-sheet spatial loss on the synthesised speech and music
scenes, four tasks (two CPU cores, under 15 minutes), checkpoint and metrics under runs/.
Presets: configs/*.json (configs/default.json is this run).
"""
import sys

from topoaudio.checkpoint import CheckpointWriteError
from topoaudio.training import TrainingDiverged, main

if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, FileExistsError, TrainingDiverged,
            CheckpointWriteError) as error:
        sys.exit(f"train.py: {error}")
