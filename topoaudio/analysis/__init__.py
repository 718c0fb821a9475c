"""Topography measurements on a trained model's layers (docs/SCIENCE.md section 6).

stimuli: probe sounds; tuning: per-unit best frequency / rate and selectivity; topography: map
statistics on the sheet (smoothness, Moran's I, patches); maps: PNG figures.
"""
from topoaudio.analysis.maps import plot_sheet_map, plot_smoothness_curve
from topoaudio.analysis.stimuli import am_noise, log_spaced, narrowband_noise, pure_tones
from topoaudio.analysis.topography import morans_i, patches, smoothness
from topoaudio.analysis.tuning import best_frequency, best_rate, selectivity

__all__ = [
    "am_noise", "best_frequency", "best_rate", "log_spaced", "morans_i", "narrowband_noise", "patches",
    "plot_sheet_map", "plot_smoothness_curve", "pure_tones", "selectivity", "smoothness",
]
