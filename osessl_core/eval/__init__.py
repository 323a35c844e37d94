"""Evaluation of frozen encoders: feature extraction, kNN, linear probe, clustering metrics, 2-D embeddings."""
from .clustering import clustering_metrics
from .curves import plot_metrics, read_metrics
from .embedding import embed_2d, plot_embeddings
from .features import extract_features
from .knn import knn_accuracy, knn_classify
from .linear import linear_probe, make_probe_optimizer

__all__ = [
    "extract_features",
    "knn_classify",
    "knn_accuracy",
    "linear_probe",
    "make_probe_optimizer",
    "clustering_metrics",
    "embed_2d",
    "plot_embeddings",
    "plot_metrics",
    "read_metrics",
]
