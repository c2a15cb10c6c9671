"""Behaviour datasets: CAA-style two-way A/B items and open-ended behaviours (requests,
target replies and a judge), bundled and from the user's files.

This package stands alone: it imports only the standard library, NumPy and
`steerlens.errors`. The bundled data and its attribution are in ``steerlens/datasets/caa/``
(see its ``ATTRIBUTION.md``).

Example:
    >>> from steerlens.datasets import load_behaviour
    >>> item = load_behaviour("refusal").train[0]
    >>> item.source, item.matching_letter(), item.matching_letter(swapped=True)
    ('refusal.generate.json#0', 'A', 'B')
"""

from __future__ import annotations

from steerlens.datasets.caa import ABItem, Behaviour, bundled_behaviours, load_behaviour
from steerlens.datasets.open_ended import (
    OpenEndedBehaviour,
    OpenItem,
    bundled_open_ended,
    load_open_ended,
)

__all__ = [
    "ABItem",
    "Behaviour",
    "OpenEndedBehaviour",
    "OpenItem",
    "bundled_behaviours",
    "bundled_open_ended",
    "load_behaviour",
    "load_open_ended",
]
