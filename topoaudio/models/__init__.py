"""Models: CochResNet50, the small cochcnn, the Audio Spectrogram Transformer (ast, ast_base),
single- or multi-task heads, and named layer taps."""
from .ast import AST, ASTBase
from .cochcnn import CochCNN
from .cochresnet50 import CochResNet50
from .heads import task_sizes
from .taps import tap_shapes, tapped

MODELS = {"cochcnn": CochCNN, "cochresnet50": CochResNet50, "ast": AST, "ast_base": ASTBase}


def build_model(name: str, n_classes: int | None = None, tasks: dict[str, int] | None = None):
    """A model by name with one classification head of n_classes (its forward returns logits
    [B, n_classes]) or one head per task of `tasks` {task: n_classes} (its forward returns
    {task: logits [B, n]})."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    if (n_classes is None) == (tasks is None):
        raise ValueError("build_model needs n_classes (one head) or tasks (one head per task), "
                         f"exactly one of them; got n_classes={n_classes!r}, tasks={tasks!r}")
    return MODELS[name](n_classes if tasks is None else tasks)


__all__ = ["AST", "ASTBase", "MODELS", "CochCNN", "CochResNet50", "build_model", "tap_shapes", "tapped",
           "task_sizes"]
