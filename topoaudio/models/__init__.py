"""Models: CochResNet50, the small cochcnn, the Audio Spectrogram Transformer (ast, ast_base),
single- or multi-task heads, and named layer taps."""
from .ast import AST, ASTBase
from .cochcnn import CochCNN
from .cochresnet50 import CochResNet50
from .frontend import CochlearFrontend, frontend_of
from .heads import POOLINGS, PooledHeads, task_sizes
from .taps import tap_shapes, tapped

MODELS = {"cochcnn": CochCNN, "cochresnet50": CochResNet50, "ast": AST, "ast_base": ASTBase}


# Models whose heads can read the maximum or the mean over frequency and time (tokens): `pooling`.
POOLING_MODELS = tuple(name for name, model in MODELS.items() if issubclass(model, PooledHeads))


def check_pooling(name: str, pooling: str | None) -> None:
    """One line naming the problem when `pooling` is given for a model without the choice (None:
    the model's own pooling, always allowed). Training's settings check calls it before any work."""
    if pooling is not None and name not in POOLING_MODELS:
        raise ValueError(f"pooling={pooling!r}: {name} has no pooling choice; only "
                         f"{', '.join(POOLING_MODELS)} have")


def build_model(name: str, n_classes: int | None = None, tasks: dict[str, int] | None = None,
                frontend: str = "exact", oversample: float | None = None, pooling: str | None = None):
    """A model by name with one classification head of n_classes (its forward returns logits
    [B, n_classes]) or one head per task of `tasks` {task: n_classes} (its forward returns
    {task: logits [B, n]}). frontend: the cochleagram's mode, "exact" or "fast" (with
    `oversample`, docs/SCIENCE.md 2b); the front end holds no weights, so checkpoints do not
    depend on it and a model can be measured through either. pooling: "max" or "mean" for the
    models of POOLING_MODELS (None: the model's own, cochcnn max and the ASTs mean); the model
    records it in its state dict."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    if (n_classes is None) == (tasks is None):
        raise ValueError("build_model needs n_classes (one head) or tasks (one head per task), "
                         f"exactly one of them; got n_classes={n_classes!r}, tasks={tasks!r}")
    check_pooling(name, pooling)
    options = {} if pooling is None else {"pooling": pooling}
    model = MODELS[name](n_classes if tasks is None else tasks, **options)
    if frontend != "exact" or oversample is not None:
        model.frontend = CochlearFrontend(mode=frontend, oversample=oversample)
    return model


__all__ = ["AST", "ASTBase", "MODELS", "POOLING_MODELS", "POOLINGS", "CochCNN", "CochResNet50", "build_model",
           "check_pooling", "frontend_of", "tap_shapes", "tapped", "task_sizes"]
