"""Cortical sheets: grid shapes, positions, seeded layouts, responses, round trips, bad input."""
import math

import pytest
import torch

from topoaudio.ops.spatial_lattice import detect
from topoaudio.sheet import (
    DEFAULT_LATTICE_MM,
    CorticalSheet,
    build_sheets,
    channel_freq_sheet,
    channels_sheet,
    grid_shape,
)


@pytest.mark.parametrize("n_channels, expected", [
    (512, (16, 32)), (64, (8, 8)), (256, (16, 16)), (49, (7, 7)), (1, (1, 1)),
    (2, (1, 2)), (13, (1, 13)), (97, (1, 97)), (12, (3, 4)), (18, (3, 6)),
])
def test_grid_shape(n_channels, expected):
    assert grid_shape(n_channels) == expected


def test_grid_shape_is_the_squarest_factorisation():
    for n_channels in range(1, 200):
        height, width = grid_shape(n_channels)
        assert height * width == n_channels and height <= width
        assert not any(n_channels % h == 0 for h in range(height + 1, math.isqrt(n_channels) + 1))


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, "8"])
def test_grid_shape_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match="n_channels"):
        grid_shape(bad)


def test_channels_sheet_positions_are_cell_centres():
    sheet = channels_sheet("conv", 512, spacing_mm=0.5)
    assert sheet.kind == "channels" and sheet.n_units == 512 and sheet.layer == "conv"
    assert sheet.positions.shape == (512, 2) and sheet.positions.dtype == torch.float32
    # channel 33 is row 1, column 1 of the 16 x 32 grid
    assert sheet.positions[33].tolist() == [0.75, 0.75]
    assert sheet.positions[31].tolist() == [15.75, 0.25]
    assert sheet.positions[:, 0].min() == 0.25 and sheet.positions[:, 0].max() == 15.75
    assert sheet.positions[:, 1].min() == 0.25 and sheet.positions[:, 1].max() == 7.75
    assert len({tuple(p) for p in sheet.positions.tolist()}) == 512


def test_channels_sheet_size_overrides_spacing_and_default_is_a_few_mm():
    sized = channels_sheet("conv", 512, size_mm=4.0)
    assert sized.params["spacing_mm"] == 0.125
    assert sized.positions[:, 0].max() + 0.0625 == pytest.approx(4.0)
    default = channels_sheet("conv", 512)
    sides_mm = default.positions.max(dim=0).values + default.params["spacing_mm"] / 2
    assert sides_mm.tolist() == pytest.approx([8.0, 4.0])


def test_channel_freq_sheet_shapes_and_ranges():
    sheet = channel_freq_sheet("stage1", 24, 10, size_mm=(6.0, 8.0), jitter_mm=0.0)
    assert sheet.kind == "channel_freq" and sheet.n_units == 240
    assert sheet.positions.shape == (240, 2) and sheet.positions.dtype == torch.float32
    assert sheet.positions[:, 0].min() > 0 and sheet.positions[:, 0].max() < 6.0
    assert sheet.positions[:, 1].min() > 0 and sheet.positions[:, 1].max() < 8.0


def test_channel_freq_sheet_is_seeded():
    first = channel_freq_sheet("stage1", 16, 8, seed=3).positions
    again = channel_freq_sheet("stage1", 16, 8, seed=3).positions
    other = channel_freq_sheet("stage1", 16, 8, seed=4).positions
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def rows(sheet):
    """positions [F, C, 2] (unit = f * C + c)."""
    return sheet.positions.reshape(sheet.n_freqs, sheet.n_channels, 2)


def test_frequency_rows_rise_along_y():
    per_row = rows(channel_freq_sheet("stage1", 32, 12, jitter_mm=0.05))
    mean_y = per_row[:, :, 1].mean(dim=1)
    assert bool((mean_y[1:] > mean_y[:-1]).all())
    # rows spread over x, not y: x is the iso-frequency axis
    assert per_row[0, :, 0].std() > 3 * per_row[0, :, 1].std()


def test_overlap_controls_whether_neighbouring_rows_interleave():
    separate = rows(channel_freq_sheet("s", 16, 6, overlap=0.0, jitter_mm=0.0))
    assert bool((separate[1:, :, 1].min(dim=1).values > separate[:-1, :, 1].max(dim=1).values).all())
    interleaved = rows(channel_freq_sheet("s", 16, 6, overlap=0.5, jitter_mm=0.0))
    assert bool((interleaved[1:, :, 1].min(dim=1).values < interleaved[:-1, :, 1].max(dim=1).values).all())


def test_channels_keep_their_place_across_rows_and_jitter_scatters_them():
    still = rows(channel_freq_sheet("s", 20, 5, jitter_mm=0.0, lattice_mm=None))
    assert torch.equal(still[:, :, 0], still[:1, :, 0].expand(5, 20))
    row_shift = still[:, :, 1] - still[:1, :, 1]
    assert torch.allclose(row_shift, row_shift[:, :1].expand(5, 20), atol=1e-5)
    # on the lattice, each row's shift is the same up to one lattice step (two roundings)
    snapped = rows(channel_freq_sheet("s", 20, 5, jitter_mm=0.0, lattice_mm=0.05))
    assert torch.equal(snapped[:, :, 0], snapped[:1, :, 0].expand(5, 20))
    row_shift = snapped[:, :, 1] - snapped[:1, :, 1]
    assert torch.allclose(row_shift, row_shift[:, :1].expand(5, 20), atol=0.05 + 1e-5)

    jittered = rows(channel_freq_sheet("s", 20, 5, jitter_mm=0.1))
    deviation = jittered - still
    assert 0.07 < deviation.std().item() < 0.13
    assert abs(deviation.mean().item()) < 0.03


def test_channels_responses_average_trailing_dims():
    sheet = channels_sheet("conv", 3)
    activations = torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2)
    expected = torch.tensor([[1.5, 5.5, 9.5], [13.5, 17.5, 21.5]])
    assert torch.equal(sheet.responses(activations), expected)
    assert torch.equal(sheet.responses(activations.flatten(2)), expected)
    assert torch.equal(sheet.responses(expected), expected)


def test_channel_freq_responses_average_time_in_unit_order():
    n_channels, n_freqs = 2, 3
    sheet = channel_freq_sheet("s", n_channels, n_freqs)
    activations = torch.randn(4, n_channels, n_freqs, 5, generator=torch.Generator().manual_seed(0))
    out = sheet.responses(activations)
    assert out.shape == (4, 6)
    for f in range(n_freqs):
        for c in range(n_channels):
            assert torch.allclose(out[:, f * n_channels + c], activations[:, c, f].mean(dim=1))
    hand_made = torch.tensor([[[[1.0, 3.0], [10.0, 20.0], [0.0, 0.0]],
                               [[-1.0, -1.0], [5.0, 7.0], [2.0, 4.0]]]])
    assert sheet.responses(hand_made).tolist() == [[2.0, -1.0, 15.0, 6.0, 0.0, 3.0]]


@pytest.mark.parametrize("shape", [(2, 4, 8, 5), (3, 2), (3,)])
def test_channels_responses_reject_wrong_channels(shape):
    sheet = channels_sheet("conv", 3)
    expected_message = r"expected activations \[B, 3, \.\.\.\], got shape " + re_shape(shape)
    with pytest.raises(ValueError, match=expected_message):
        sheet.responses(torch.zeros(shape))


@pytest.mark.parametrize("shape", [(2, 4, 6, 5), (2, 3, 7, 5), (2, 3, 6), (2, 3, 6, 5, 1)])
def test_channel_freq_responses_reject_wrong_shapes(shape):
    sheet = channel_freq_sheet("stage", 3, 6)
    with pytest.raises(ValueError, match=r"\[B, 3, 6, T\].*got shape " + re_shape(shape)):
        sheet.responses(torch.zeros(shape))


def re_shape(shape):
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


@pytest.mark.parametrize("make", [
    lambda: channels_sheet("a", 0),
    lambda: channels_sheet("a", 8, spacing_mm=0),
    lambda: channels_sheet("a", 8, size_mm=-1.0),
    lambda: channel_freq_sheet("a", 8, 0),
    lambda: channel_freq_sheet("a", 0, 8),
    lambda: channel_freq_sheet("a", 8, 4, overlap=1.0),
    lambda: channel_freq_sheet("a", 8, 4, overlap=-0.1),
    lambda: channel_freq_sheet("a", 8, 4, jitter_mm=-0.1),
    lambda: channel_freq_sheet("a", 8, 4, size_mm=(1.0, 0.0)),
    lambda: channel_freq_sheet("a", 8, 4, seed=1.5),
    lambda: CorticalSheet("a", "pixels", torch.zeros(4, 2), 4),
    lambda: CorticalSheet("a", "channels", torch.zeros(5, 2), 4),
])
def test_bad_construction_raises(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("make", [
    lambda: channels_sheet("conv3", 96, spacing_mm=0.3),
    lambda: channel_freq_sheet("stage2", 12, 7, size_mm=(5.0, 9.0), overlap=0.3, jitter_mm=0.2, seed=11),
])
def test_state_dict_round_trip(make):
    sheet = make()
    state = sheet.state_dict()
    assert isinstance(state["positions"], torch.Tensor)
    restored = CorticalSheet.from_state_dict(state)
    assert torch.equal(restored.positions, sheet.positions)
    assert restored.positions.dtype == torch.float32
    for name in ("layer", "kind", "n_units", "n_channels", "n_freqs", "params"):
        assert getattr(restored, name) == getattr(sheet, name)
    assert repr(restored) == repr(sheet) and len(repr(sheet)) < 160
    restored.positions[0, 0] = -100.0
    assert sheet.positions[0, 0] != -100.0, "the restored sheet must not share memory with the original"


def test_from_state_dict_rejects_incomplete_state():
    state = channels_sheet("a", 8).state_dict()
    del state["positions"]
    with pytest.raises(ValueError, match="positions"):
        CorticalSheet.from_state_dict(state)


# --- lattices (issue 14) -----------------------------------------------------------------------

@pytest.mark.parametrize("lattice_mm", [DEFAULT_LATTICE_MM, 0.1, 0.037])
def test_channel_freq_snapping_moves_each_coordinate_by_at_most_half_a_step(lattice_mm):
    kwargs = dict(size_mm=(10.0, 7.0), seed=2)
    free = channel_freq_sheet("s", 64, 30, lattice_mm=None, **kwargs)
    snapped = channel_freq_sheet("s", 64, 30, lattice_mm=lattice_mm, **kwargs)
    assert free.lattice_spacing is None and snapped.lattice_spacing == lattice_mm
    moved = (snapped.positions.double() - free.positions.double()).abs()
    rounding = 2 * torch.finfo(torch.float32).eps * 11.0  # both sheets are float32 copies
    assert moved.max() <= lattice_mm / 2 + rounding
    assert moved.max() > lattice_mm / 4  # something did move: the jitter is not on the lattice
    steps = snapped.positions.double() / lattice_mm
    assert (steps - steps.round()).abs().max() * lattice_mm <= rounding


def test_sheets_we_build_are_found_on_their_lattice():
    # the channel_freq sheets of a CochResNet50-like tap set, and a channels sheet
    sheets = build_sheets({"layer1": (256, 53), "layer4": (2048, 7)}, "channel_freq")
    for sheet in sheets.values():
        lattice = detect(sheet.positions)
        assert lattice.spacing == pytest.approx((DEFAULT_LATTICE_MM,) * 2, rel=1e-5)
        # ~10 mm plus the jitter's tails, in 0.05 mm steps; padded grid ~420 x 420
        assert all(190 <= g <= 230 for g in lattice.shape), lattice.shape
        assert lattice.padded_sites <= 480 * 480
    channels = channels_sheet("conv", 512)
    assert channels.lattice_spacing == channels.params["spacing_mm"]
    lattice = detect(channels.positions)
    assert lattice.shape == (32, 16) and lattice.spacing == pytest.approx((0.25, 0.25))


def test_lattice_spacing_round_trips_and_old_states_load_off_lattice():
    sheet = channel_freq_sheet("s", 16, 8, seed=1)
    state = sheet.state_dict()
    assert state["lattice_spacing"] == DEFAULT_LATTICE_MM
    again = CorticalSheet.from_state_dict(state)
    assert again.lattice_spacing == DEFAULT_LATTICE_MM
    assert torch.equal(again.positions, sheet.positions)
    old = {key: value for key, value in state.items() if key != "lattice_spacing"}
    old["positions"] = channel_freq_sheet("s", 16, 8, seed=1, lattice_mm=None).positions
    restored = CorticalSheet.from_state_dict(old)
    assert restored.lattice_spacing is None and torch.equal(restored.positions, old["positions"])


def test_a_sheet_cannot_claim_a_lattice_its_positions_are_not_on():
    positions = channel_freq_sheet("s", 16, 8, lattice_mm=None).positions
    with pytest.raises(ValueError, match="not on a lattice of spacing 0.05 mm"):
        CorticalSheet("s", "channel_freq", positions, 16, 8, lattice_spacing=0.05)
    with pytest.raises(ValueError, match="lattice_mm must be a positive"):
        channel_freq_sheet("s", 16, 8, lattice_mm=0.0)
