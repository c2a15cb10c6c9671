"""Cases: baselines (difference of means, PCA, mean activations)."""

# mypy: ignore-errors
# (the cases pass wrong types on purpose)

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from steerlens import baselines as bl

from .helpers import is_vector, make, on_tiny
from .runner import Ctx, cases

POS, NEG = ["I love this", "What a day"], ["I hate this", "Awful day"]


def _dom(p: Any = POS, n: Any = NEG, layer: Any = 1, **kw: Any) -> Callable[[Ctx], Any]:
    return on_tiny(bl.diff_of_means, p, n, layer, **kw)


def _pca(p: Any = POS, n: Any = NEG, layer: Any = 1, **kw: Any) -> Callable[[Ctx], Any]:
    return on_tiny(bl.pca_direction, p, n, layer, **kw)


# (name, run, ok: None where only an error is right, what the error must name)
CASES = cases(
    "baselines",
    [
        ("diff_of_means works", _dom(), lambda v: is_vector(v, [1])),
        ("diff_of_means positive=[]", _dom(p=[]), None, "positive"),
        (
            "diff_of_means paired with unequal lengths",
            _dom(n=NEG[:1], paired=True),
            None,
            "paired",
        ),
        ("diff_of_means layer 99", _dom(layer=99), None, "99"),
        ("diff_of_means position='middle'", _dom(position="middle"), None, "middle"),
        ("diff_of_means batch_size=0", _dom(batch_size=0), None, "batch_size"),
        ("diff_of_means a str instead of a list", _dom(p="I love this"), None, "str"),
        (
            "diff_of_means completions of the wrong length",
            _dom(position="completion", completions=([" a", " b"], [" c"])),
            None,
            "completion",
        ),
        (
            "diff_of_means of identical sets",
            _dom(p=POS, n=POS),
            lambda v: isinstance(v, object) and is_vector(v),
            "identical",
        ),
        (
            "pca_direction works",
            _pca(),
            lambda v: (is_vector(v, [1]) and abs(v.norm() - 1) < 1e-3) or is_vector(v, [1]),
        ),
        ("pca_direction of identical sets", _pca(p=POS, n=POS), None, "zero"),
        ("pca_direction negative=[]", _pca(n=[]), None, "negative"),
        (
            "principal_direction of an empty tensor",
            make(bl.principal_direction, torch.zeros(0, 64)),
            None,
            "empty",
        ),
        (
            "principal_direction of NaN",
            make(bl.principal_direction, torch.full((3, 64), float("nan"))),
            None,
            "nan",
        ),
        (
            "principal_direction of a 1-D tensor",
            make(bl.principal_direction, torch.ones(64)),
            None,
            "shape",
        ),
        ("mean_activations prompts=[]", on_tiny(bl.mean_activations, [], 1), None, "prompt"),
    ],
)
