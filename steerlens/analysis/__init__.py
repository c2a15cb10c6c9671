"""Analysis and figures: every plotting function returns a plotly ``Figure`` and never shows it."""

from steerlens.analysis.compare import ComparisonResult, compare_with_caa, roc_auc
from steerlens.analysis.connectivity import (
    AllPairsConnectivity,
    ConnectivityResult,
    all_pairs_connectivity,
    geodesic,
    mode_connectivity,
)
from steerlens.analysis.geometry import CosineResult, cosine_matrix, project_2d
from steerlens.analysis.layer_sweep import LayerSweepResult, layer_sweep
from steerlens.analysis.plots import plot_loss_history, save_html
from steerlens.analysis.report import write_report
from steerlens.baselines import collect_activations, mean_activations, pca_direction

__all__ = [
    "AllPairsConnectivity",
    "ComparisonResult",
    "ConnectivityResult",
    "CosineResult",
    "LayerSweepResult",
    "all_pairs_connectivity",
    "collect_activations",
    "compare_with_caa",
    "cosine_matrix",
    "geodesic",
    "layer_sweep",
    "mean_activations",
    "mode_connectivity",
    "pca_direction",
    "plot_loss_history",
    "project_2d",
    "roc_auc",
    "save_html",
    "write_report",
]
