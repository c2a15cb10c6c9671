"""Cases: data (Datapoint, Positions, Objective)."""

# mypy: ignore-errors
# (the cases pass wrong types on purpose)

from __future__ import annotations

from steerlens import Datapoint, Positions
from steerlens.training.objectives import Objective

from .helpers import make, opt, without_chat_template
from .runner import cases

# Bad Objective settings, and what the error must name.
BAD_OBJECTIVES = [
    ({"coldness": float("inf")}, "coldness"),
    ({"coldness": float("nan")}, "coldness"),
    ({"coldness": 0.0}, "coldness"),
    ({"suppression": "bad"}, "bad"),
    ({"length_normalize": "yes"}, "length_normalize"),
]

# (name, run, ok: None where only an error is right, what the error must name)
CASES = cases(
    "data",
    [
        ("Datapoint(123)", make(Datapoint, 123, promote=["x"]), None, "int"),
        ("Datapoint(b'bytes')", make(Datapoint, b"x", promote=["x"]), None, "bytes"),
        ("Datapoint('')", make(Datapoint, "", promote=["x"]), None, "empty"),
        ("Datapoint without completions", lambda c: opt(c, Datapoint("hi")), None, "completion"),
        ("promote=5", make(Datapoint, "a", promote=5), None, "promote"),
        (
            "promote=None",
            make(Datapoint, "a", promote=None, suppress=["b"]),
            lambda d: d.promote == (),
        ),
        ("promote=['']", lambda c: opt(c, Datapoint("a", promote=[""])), None, "empty"),
        (
            "promote='abc' (a str, not a list)",
            make(Datapoint, "a", promote=" abc"),
            lambda d: tuple(d.promote) == (" abc",),
            "str",
        ),
        ("promote=[5]", make(Datapoint, "a", promote=[5]), None, "5"),
        ("negate='yes'", make(Datapoint, "a", promote=["b"], negate="yes"), None, "negate"),
        (
            "promote_targets of the wrong length",
            make(Datapoint, "a", promote=["b"], promote_targets=[1.0, 2.0]),
            None,
            "promote_targets",
        ),
        (
            "promote_targets=['x']",
            make(Datapoint, "a", promote=["b"], promote_targets=["x"]),
            None,
            "promote_targets",
        ),
        (
            "promote_targets=[nan]",
            make(Datapoint, "a", promote=["b"], promote_targets=[float("nan")]),
            None,
            "nan",
        ),
        (
            "positions='bogus'",
            make(Datapoint, "a", promote=["b"], positions="bogus"),
            None,
            "bogus",
        ),
        ("Positions.at([])", make(Positions.at, []), None, "position"),
        ("Positions(kind='xyz')", make(Positions, kind="xyz"), None, "xyz"),
        ("Positions.last(0)", make(Positions.last, 0), None, "0"),
        ("Positions.last(-2)", make(Positions.last, -2), None, "-2"),
        (
            "Datapoint.from_message on a model without a chat template",
            lambda c: without_chat_template(
                c, lambda c: Datapoint.from_message(c.tiny, "hi", promote=[" x"])
            ),
            None,
            "chat template",
        ),
        *[(f"Objective({kw})", make(Objective, **kw), None, m) for kw, m in BAD_OBJECTIVES],
    ],
)
