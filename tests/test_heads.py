"""The heads every model builds and applies through topoaudio/models/heads.py: their shapes, their
outputs, and the state-dict names old checkpoints were saved under (cochcnn and ast: "head" for one
head; CochResNet50: "heads.out"; all: "heads.<task>" for several)."""
import pytest
import torch
from torch import nn

from topoaudio.models import AST, CochCNN, CochResNet50
from topoaudio.models.heads import apply_heads, build_heads


def test_one_head_is_a_linear_and_its_logits_a_tensor():
    torch.manual_seed(0)
    head = build_heads(5, 8)
    torch.manual_seed(0)
    by_hand = nn.Linear(8, 5)  # what the models built before the helper: the same seed, same weights
    assert isinstance(head, nn.Linear) and torch.equal(head.weight, by_hand.weight)
    pooled = torch.randn(3, 8)
    assert torch.equal(apply_heads(head, pooled), by_hand(pooled))


def test_several_heads_give_one_logit_tensor_per_task_in_order():
    torch.manual_seed(1)
    heads = build_heads({"word": 4, "speaker": 2}, 8)
    torch.manual_seed(1)
    word, speaker = nn.Linear(8, 4), nn.Linear(8, 2)  # built in the dict's order
    pooled = torch.randn(3, 8)
    logits = apply_heads(heads, pooled)
    assert list(logits) == ["word", "speaker"]
    assert torch.equal(logits["word"], word(pooled)) and torch.equal(logits["speaker"], speaker(pooled))


def test_bad_heads_are_refused_before_building():
    with pytest.raises(ValueError, match="at least 1 class"):
        build_heads(0, 8)
    with pytest.raises(ValueError, match="without '.'"):
        build_heads({"a.b": 2}, 8)


def head_keys(model: nn.Module) -> set[str]:
    return {name for name in model.state_dict() if name.startswith("head")}


@pytest.mark.parametrize("make, single", [
    (lambda heads: CochCNN(heads), "head"),
    (lambda heads: AST(heads, depth=1, width=16, n_heads=2, mlp_ratio=2), "head"),
    (CochResNet50, "heads.out"),
])
def test_state_dict_names_are_the_ones_checkpoints_hold(make, single):
    assert head_keys(make(5)) == {f"{single}.weight", f"{single}.bias"}
    assert head_keys(make({"word": 3, "speaker": 2})) == {
        "heads.word.weight", "heads.word.bias", "heads.speaker.weight", "heads.speaker.bias"}
