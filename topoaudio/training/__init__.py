"""Training: configuration, the DDP loop with exact resume, checkpoints, topographic losses."""
from .config import TrainConfig, parse_args
from .loop import TrainingDiverged, train


def main(argv=None) -> dict:
    """Entry point of `torchrun train.py ...`."""
    import sys

    config, resume = parse_args(sys.argv[1:] if argv is None else list(argv))
    return train(config, resume=resume)


__all__ = ["TrainConfig", "TrainingDiverged", "main", "parse_args", "train"]
