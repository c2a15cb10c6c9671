"""Every HTML page steerlens writes has the one shared stylesheet."""

from __future__ import annotations

import torch

from steerlens import Datapoint, optimize_vector
from steerlens.analysis import token_view, vector_card, write_optimization_report
from steerlens.io.html_page import STYLE
from steerlens.steering.vector import SteeringVector
from steerlens.studies.page import Page, write_page


def test_reports_cards_and_views_share_one_stylesheet(tiny, tmp_path):
    result = optimize_vector(tiny, Datapoint("the cat", promote=[" sat"]), 1, max_steps=1)
    vector = SteeringVector.from_tensor(torch.ones(64), 1, model=tiny)
    study_page = Page()
    study_page.add("<p>study</p>")
    card = vector_card(tiny, vector, prompts=["the cat"])
    pages = {
        "optimization report": write_optimization_report(tmp_path / "r.html", result, []),
        "vector card": card.save_html(tmp_path / "c.html"),
        "token view": token_view(tiny, vector, "the cat sat").save_html(tmp_path / "v.html"),
        "study / benchmark report": write_page(study_page, tmp_path / "s.html", "study"),
    }
    unstyled = [name for name, path in pages.items() if STYLE not in path.read_text("utf-8")]
    assert not unstyled, f"pages without the shared stylesheet: {unstyled}"
