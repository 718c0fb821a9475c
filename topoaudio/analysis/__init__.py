"""Topography measurements on a trained model's layers (docs/SCIENCE.md sections 6 and 8).

stimuli: probe sounds; tuning: per-unit best frequency / rate and selectivity, silent units;
topography: map statistics on the sheet (smoothness, Moran's I and its permutation test, patches,
within-band maps); controls: the untrained network, shuffled positions, frequency bands; maps: PNG
figures; evaluation: checkpoints -> maps -> metrics -> report; any_model: ``measure_model``, the same
measurement of a model the caller built (imported on first use).
"""
from topoaudio.analysis.maps import plot_sheet_map, plot_smoothness_curve
from topoaudio.analysis.stimuli import am_noise, log_spaced, narrowband_noise, pure_tones
from topoaudio.analysis.topography import morans_i, morans_i_test, patches, smoothness, within_band
from topoaudio.analysis.tuning import best_frequency, best_rate, selectivity, silent_units

__all__ = [
    "am_noise", "best_frequency", "best_rate", "log_spaced", "measure_model", "morans_i",
    "morans_i_test", "narrowband_noise", "patches", "plot_sheet_map", "plot_smoothness_curve", "pure_tones",
    "selectivity", "silent_units", "smoothness", "within_band",
]


def __getattr__(name):
    # measure_model pulls in the whole evaluation (brain, data, models): only when asked for
    if name == "measure_model":
        from topoaudio.analysis.any_model import measure_model

        return measure_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
