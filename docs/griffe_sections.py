"""A griffe extension for the API reference (mkdocs.yml loads it through mkdocstrings).

steerlens docstrings head their doctests ``Example:``, the Google-style name that Sphinx's
napoleon reads. griffe knows only ``Examples:``; it takes ``Example:`` for an admonition and
renders its body as Markdown, where each ``>>>`` is a nested blockquote and the lines run
together. Renaming the heading before griffe parses the docstring makes the body an examples
section: code blocks, with doctest flags such as ``# doctest: +SKIP`` trimmed.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

# A section heading stands alone at the docstring's own indentation (griffe dedents the text).
_EXAMPLE_HEADING = re.compile(r"^Example:[ \t]*$", flags=re.MULTILINE)


def examples_heading(text: str) -> str:
    """``text`` with each ``Example:`` section heading renamed ``Examples:``."""
    return _EXAMPLE_HEADING.sub("Examples:", text)


class ExampleSections(griffe.Extension):
    """Reads every ``Example:`` section as griffe's ``Examples:`` section."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = examples_heading(obj.docstring.value)
