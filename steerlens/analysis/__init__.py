"""Analysis and figures: every plotting function returns a plotly ``Figure`` and never shows it."""

from steerlens.analysis.card import VectorCard, vector_card
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
from steerlens.analysis.lens import LogitLensResult, logit_lens, logit_lens_difference
from steerlens.analysis.plots import plot_loss_history, save_html
from steerlens.analysis.report import write_optimization_report
from steerlens.analysis.scale import ResidualNorms, residual_norms
from steerlens.analysis.tokens_view import TokenView, token_view
from steerlens.baselines import collect_activations, mean_activations, pca_direction

__all__ = [
    "AllPairsConnectivity",
    "ComparisonResult",
    "ConnectivityResult",
    "CosineResult",
    "LayerSweepResult",
    "LogitLensResult",
    "ResidualNorms",
    "TokenView",
    "VectorCard",
    "all_pairs_connectivity",
    "collect_activations",
    "compare_with_caa",
    "cosine_matrix",
    "geodesic",
    "layer_sweep",
    "logit_lens",
    "logit_lens_difference",
    "mean_activations",
    "mode_connectivity",
    "pca_direction",
    "plot_loss_history",
    "project_2d",
    "residual_norms",
    "roc_auc",
    "save_html",
    "token_view",
    "vector_card",
    "write_optimization_report",
]
