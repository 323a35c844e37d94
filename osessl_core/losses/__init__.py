"""Functional losses: pure functions of tensors, one module per method."""
from .common import soft_cross_entropy
from .osessl import (discriminative_scores, exemplar_prototypes, interpolation_losses, prototype_alignment_loss,
                     prototype_dispersion_loss, prototype_probabilities)
from .resa import resa_loss
from .sinkhorn import sinkhorn

__all__ = ["sinkhorn", "resa_loss", "soft_cross_entropy", "discriminative_scores", "exemplar_prototypes",
           "prototype_probabilities", "prototype_alignment_loss", "prototype_dispersion_loss",
           "interpolation_losses"]
