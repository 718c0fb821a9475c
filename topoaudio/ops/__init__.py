"""Public ops. Each has a plain-PyTorch reference in `reference`, fused backends chosen by
`dispatch`, and a torch.library registration (see docs/DESIGN.md)."""
from . import dispatch, reference
from .bn_relu_pool import batch_norm_relu_pool, batch_norm_relu_pool_module
from .cochleagram import Cochleagram, cochleagram, cochleagram_axes, valid_frames
from .cochlear_filters import CochleagramConfig
from .dispatch import available_backends, last_backend, use_backend
from .spatial_loss import SpatialLoss, spatial_loss
from .tdann_windows import nearest_neighbourhood, tdann_neighbourhood, tdann_neighbourhood_size

__all__ = [
    "Cochleagram",
    "CochleagramConfig",
    "SpatialLoss",
    "available_backends",
    "batch_norm_relu_pool",
    "batch_norm_relu_pool_module",
    "cochleagram",
    "cochleagram_axes",
    "dispatch",
    "last_backend",
    "nearest_neighbourhood",
    "reference",
    "spatial_loss",
    "tdann_neighbourhood",
    "tdann_neighbourhood_size",
    "use_backend",
    "valid_frames",
]
