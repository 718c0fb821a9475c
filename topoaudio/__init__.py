"""topoaudio: topographic auditory models (TopoAudio, arXiv 2509.24039) with fused kernels."""
__version__ = "0.1.0"
