"""Train a topographic auditory model.

    torchrun [--nproc_per_node=K] train.py [--config FILE.json] [--steps N] [--out DIR] [--resume]
                                           [--key value ...]
    topoaudio train ...   (the same command, one process)

With no arguments: cochcnn with the whole-sheet spatial loss on the synthesised speech and music
scenes, four tasks (two CPU cores, about 20 minutes), checkpoint and metrics under runs/.
Presets: configs/*.json (configs/default.json is this run). `train.py --help` lists every setting.
"""
from topoaudio.commandline import sleeping_openmp_waits

sleeping_openmp_waits()  # before torch is imported (OMP_WAIT_POLICY is read once, at load)

from topoaudio.training import command  # noqa: E402

if __name__ == "__main__":
    command()
