"""Public ops. Each has a plain-PyTorch reference in `reference`, fused backends chosen by
`dispatch`, and a torch.library registration (see docs/DESIGN.md)."""
from . import dispatch, reference
from .cochleagram import Cochleagram, cochleagram
from .cochlear_filters import CochleagramConfig
from .dispatch import available_backends, last_backend, use_backend
from .spatial_loss import SpatialLoss, spatial_loss

__all__ = [
    "Cochleagram",
    "CochleagramConfig",
    "SpatialLoss",
    "available_backends",
    "cochleagram",
    "dispatch",
    "last_backend",
    "reference",
    "spatial_loss",
    "use_backend",
]
