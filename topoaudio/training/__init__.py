"""Training: configuration, the DDP loop with exact resume, checkpoints, topographic losses."""
from .config import TrainConfig, parse_args, parse_command
from .loop import TrainingDiverged, train


def main(argv=None) -> dict:
    """Entry point of `torchrun train.py ...`. A new run takes the given settings over the
    defaults; --resume takes the run's saved settings, and the given ones may only extend it."""
    import sys

    given, resume = parse_command(sys.argv[1:] if argv is None else list(argv))
    if resume:
        return train(resume=True, requested=given)
    return train(TrainConfig(**given))


__all__ = ["TrainConfig", "TrainingDiverged", "main", "parse_args", "parse_command", "train"]
