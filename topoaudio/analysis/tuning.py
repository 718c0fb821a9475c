"""Per-unit tuning: best frequency, best modulation rate, category selectivity (SCIENCE.md section 6).

Responses are [n_stimuli, N]: the response of each of a layer's N units to each stimulus, already
averaged over time (``CorticalSheet.responses``). Repeated presentations may be passed as
[n_stimuli, n_repeats, N]; they are averaged first.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

# A unit is silent when the spread (max - min) of its mean responses over the stimuli is at most this
# fraction of its largest |mean response| (all-zero units included: 0 <= 0). Relative, so the rule
# does not depend on a layer's activation scale; 1e-6 is about 10 float32 roundings, so a constant
# unit whose time averages differ only by rounding still counts as silent.
SILENT_RELATIVE_SPREAD = 1e-6


def best_frequency(responses: torch.Tensor, freqs) -> torch.Tensor:
    """Best frequency [N] in Hz: freqs[argmax over stimuli of the mean response].

    responses: [n_tones, N] (or [n_tones, n_repeats, N]); freqs: [n_tones] Hz. Map log2 of the
    result on the sheet. A unit whose mean response is the same for every stimulus (a dead unit)
    has no best frequency and gets NaN, rather than the first frequency by accident of argmax;
    the topography functions drop NaN units. Ties between distinct maxima go to the lower index.
    "The same for every stimulus" is ``silent_units``' rule, with its tolerance.
    """
    return _best_stimulus(responses, freqs, "freqs")


def best_rate(responses: torch.Tensor, rates) -> torch.Tensor:
    """Best amplitude-modulation rate [N] in Hz; as ``best_frequency`` with rates [n_rates]."""
    return _best_stimulus(responses, rates, "rates")


def selectivity(responses: torch.Tensor, labels, a, b) -> torch.Tensor:
    """Welch t [N] of each unit's responses to stimuli labelled ``a`` versus ``b``.

    responses: [n_stimuli, N] (or [n_stimuli, n_repeats, N], averaged over repeats); labels: one
    label per stimulus (strings or ints). ``a`` and ``b`` are each one label value or a collection
    of values, e.g. a={"Music", "Song"}, b={"EngSpeech", "ForSpeech"}.
    t = (m_a - m_b) / sqrt(s_a^2 / n_a + s_b^2 / n_b) with unbiased variances (n - 1); positive t
    means the unit prefers ``a``. A unit silent over the stimuli of ``a`` and ``b`` (``silent_units``)
    has no preference to measure and gets NaN, like a dead unit's best frequency, so the map
    statistics drop it (t = 0 would count it as a unit with no preference and pull smoothness
    down). A responding unit constant within each group but not across them (zero standard error)
    gets +-inf, which the map statistics drop as well. Computed in float64, returned float32.
    """
    mean_responses = _stimulus_means(responses).to(torch.float64)
    labels = labels.tolist() if isinstance(labels, torch.Tensor) else list(labels)
    if len(labels) != mean_responses.shape[0]:
        raise ValueError(f"got {len(labels)} labels for {mean_responses.shape[0]} stimuli")
    group_a, group_b = _label_set(a), _label_set(b)
    if group_a & group_b:
        raise ValueError(f"groups a and b share labels {sorted(map(str, group_a & group_b))}")
    in_a = torch.tensor([label in group_a for label in labels], device=mean_responses.device)
    in_b = torch.tensor([label in group_b for label in labels], device=mean_responses.device)
    for name, mask in (("a", in_a), ("b", in_b)):
        if int(mask.sum()) < 2:
            raise ValueError(f"group {name} needs at least 2 stimuli, got {int(mask.sum())}")

    responses_a, responses_b = mean_responses[in_a], mean_responses[in_b]
    mean_a, mean_b = responses_a.mean(dim=0), responses_b.mean(dim=0)
    var_a, var_b = responses_a.var(dim=0), responses_b.var(dim=0)
    standard_error = (var_a / responses_a.shape[0] + var_b / responses_b.shape[0]).sqrt()
    t = (mean_a - mean_b) / standard_error
    silent = silent_units(mean_responses[in_a | in_b])
    return torch.where(silent, torch.full_like(t, float("nan")), t).to(torch.float32)


def silent_units(responses: torch.Tensor) -> torch.Tensor:
    """[N] bool: units that do not respond to the stimuli, i.e. whose mean responses over the
    stimuli satisfy max - min <= SILENT_RELATIVE_SPREAD * max |response| (so all-zero units, dead
    ReLUs, are silent, and a constant unit is silent whatever its level).

    responses: [n_stimuli, N] or [n_stimuli, n_repeats, N] (averaged over repeats first).
    """
    mean_responses = _stimulus_means(responses).to(torch.float64)
    spread = mean_responses.amax(dim=0) - mean_responses.amin(dim=0)
    return spread <= SILENT_RELATIVE_SPREAD * mean_responses.abs().amax(dim=0)


def _best_stimulus(responses: torch.Tensor, stimulus_values, name: str) -> torch.Tensor:
    mean_responses = _stimulus_means(responses)
    stimulus_values = torch.as_tensor(stimulus_values, dtype=torch.float32,
                                      device=mean_responses.device).reshape(-1)
    if stimulus_values.numel() != mean_responses.shape[0]:
        raise ValueError(f"{name} has {stimulus_values.numel()} values for "
                         f"{mean_responses.shape[0]} stimuli")
    best = stimulus_values[mean_responses.argmax(dim=0)]
    return torch.where(silent_units(mean_responses), torch.full_like(best, float("nan")), best)


def _stimulus_means(responses: torch.Tensor) -> torch.Tensor:
    """[n_stimuli, N] from [n_stimuli, N] or [n_stimuli, n_repeats, N]."""
    if not isinstance(responses, torch.Tensor) or responses.dim() not in (2, 3):
        shape = tuple(responses.shape) if isinstance(responses, torch.Tensor) else type(responses)
        raise ValueError(f"responses must be [n_stimuli, N] or [n_stimuli, n_repeats, N], got {shape}")
    if responses.dim() == 3:
        responses = responses.mean(dim=1)
    return responses


def _label_set(group) -> set:
    # A string is one label, not a collection of characters.
    if isinstance(group, (str, bytes)) or not isinstance(group, Iterable):
        return {group}
    return set(group)
