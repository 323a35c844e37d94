"""Functional losses: pure functions of tensors, one module per method."""
from .barlow import barlow_twins_loss
from .byol import byol_loss
from .cmsf import (constrain_to_labels, constrain_to_members, mean_shift_loss, nearest, pairwise_distances,
                   pseudo_labels)
from .common import soft_cross_entropy
from .dino import dino_center_update, dino_loss, teacher_temperature
from .dsa import (arranging_loss, arranging_row_lse, connection_score, constraint_loss, prior_matrix,
                  regulator)
from .osessl import (discriminative_scores, exemplar_prototypes, interpolation_losses, prototype_alignment_loss,
                     prototype_dispersion_loss, prototype_probabilities)
from .mocov3 import mocov3_loss
from .resa import resa_loss
from .simclr import nt_xent
from .simsiam import simsiam_loss
from .sinkhorn import sinkhorn
from .sop import (build_sops, sop_cls_loss, sop_cls_term, sop_patch_loss, sop_patch_term,
                  sop_probabilities)
from .swav import swav_codes, swav_loss
from .wmse import whiten, wmse_loss
from .vicreg import vicreg_loss, vicreg_terms

__all__ = ["sinkhorn", "resa_loss", "soft_cross_entropy", "discriminative_scores", "exemplar_prototypes",
           "prototype_probabilities", "prototype_alignment_loss", "prototype_dispersion_loss",
           "interpolation_losses",
           "nt_xent", "byol_loss", "regulator", "prior_matrix", "constraint_loss", "connection_score",
           "arranging_row_lse", "arranging_loss",
           "build_sops", "sop_probabilities", "sop_cls_loss", "sop_patch_loss", "sop_cls_term", "sop_patch_term",
           "pairwise_distances", "nearest", "constrain_to_members", "constrain_to_labels", "mean_shift_loss",
           "pseudo_labels",
           "simsiam_loss", "mocov3_loss", "barlow_twins_loss", "vicreg_loss", "vicreg_terms"]
__all__ += ["swav_codes", "swav_loss", "dino_loss", "dino_center_update", "teacher_temperature", "whiten",
            "wmse_loss"]
