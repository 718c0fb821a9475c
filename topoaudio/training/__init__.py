"""Training: configuration, the DDP loop with exact resume, checkpoints, topographic losses."""
from .config import TrainConfig, parse_args, parse_command
from .loop import TrainingDiverged, train


def main(argv=None, prog: str = "train.py") -> dict:
    """Entry point of `torchrun train.py ...`. A new run takes the given settings over the
    defaults; --resume takes the run's saved settings, and the given ones may only extend it."""
    import sys

    given, resume = parse_command(sys.argv[1:] if argv is None else list(argv), prog)
    if resume:
        return train(resume=True, requested=given)
    return train(TrainConfig(**given))


def command(argv=None, prog: str = "train.py") -> dict:
    """`main` as a command (train.py, `topoaudio train`): what can go wrong with the settings, the
    data, the run directory or the run itself ends it with one line `PROG: message`; --help exits 0."""
    import sys

    from topoaudio.checkpoint import CheckpointWriteError

    try:
        return main(argv, prog)
    except (ValueError, FileNotFoundError, FileExistsError, TrainingDiverged,
            CheckpointWriteError) as error:
        sys.exit(f"{prog}: {error}")


__all__ = ["TrainConfig", "TrainingDiverged", "command", "main", "parse_args", "parse_command", "train"]
