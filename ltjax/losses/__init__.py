"""Per-example losses for long-tailed classification, in optax's functional style.

One convention: `loss(logits, labels, *, class_counts, <hyperparameters>) -> f[...]`, the
signature `ltjax.testing` checks. Every loss that reads class statistics takes the training counts
as `class_counts=`; `logit_adjusted_loss` (and `ltjax.posthoc.adjust_logits`) also take the paper's
`log_prior=` instead. Hyperparameters are keyword-only and, when concrete, checked against the
domains the method registry uses (`ltjax._domains`): a bad value raises one line naming it.
"""
from ltjax.losses._cosine_margin import ala_loss
from ltjax.losses._cosine_margin import ldam_loss
from ltjax.losses._cosine_margin import ldam_margins
from ltjax.losses._cosine_margin import quantity_factors
from ltjax.losses._eql import equalization_loss
from ltjax.losses._focal import focal_loss
from ltjax.losses._gala import GalaState
from ltjax.losses._gala import gala_adjusted_logits
from ltjax.losses._gala import gala_init
from ltjax.losses._gala import gala_loss
from ltjax.losses._gala import gala_margins
from ltjax.losses._gala import gala_update
from ltjax.losses._logit_adjusted import balanced_softmax_loss
from ltjax.losses._logit_adjusted import logit_adjusted_loss
from ltjax.losses._pairwise_margin import pairwise_margin_loss
from ltjax.losses._smoothing import label_over_smooth_loss
from ltjax.losses._weights import class_balanced_weights
from ltjax.losses._weights import drw_weights
from ltjax.losses._weights import weighted_mean

__all__ = (
    "GalaState",
    "ala_loss",
    "balanced_softmax_loss",
    "class_balanced_weights",
    "drw_weights",
    "equalization_loss",
    "focal_loss",
    "gala_adjusted_logits",
    "gala_init",
    "gala_loss",
    "gala_margins",
    "gala_update",
    "label_over_smooth_loss",
    "ldam_loss",
    "ldam_margins",
    "logit_adjusted_loss",
    "pairwise_margin_loss",
    "quantity_factors",
    "weighted_mean",
)
