"""Analysis and figures: every plotting function returns a plotly ``Figure`` and never shows it."""

from steerlens.analysis.plots import plot_loss_history, save_html
from steerlens.analysis.report import write_report

__all__ = ["plot_loss_history", "save_html", "write_report"]
