"""Sounds and datasets. `builtin` synthesises sounds from a seed (no files, no network)."""
from .builtin import demo_sound

__all__ = ["demo_sound"]
