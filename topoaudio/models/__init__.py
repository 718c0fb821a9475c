"""Models: CochResNet50, the small cochcnn, and named layer taps."""
from .cochcnn import CochCNN
from .cochresnet50 import CochResNet50
from .taps import tap_shapes, tapped

MODELS = {"cochcnn": CochCNN, "cochresnet50": CochResNet50}


def build_model(name: str, n_classes: int):
    """A model by name, with one classification head of n_classes."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](n_classes)


__all__ = ["MODELS", "CochCNN", "CochResNet50", "build_model", "tap_shapes", "tapped"]
