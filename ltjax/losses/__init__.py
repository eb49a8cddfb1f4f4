"""Per-example losses for long-tailed classification, in optax's functional style."""
from ltjax.losses._cosine_margin import ala_loss
from ltjax.losses._cosine_margin import ldam_loss
from ltjax.losses._cosine_margin import ldam_margins
from ltjax.losses._cosine_margin import quantity_factors
from ltjax.losses._eql import equalization_loss
from ltjax.losses._focal import focal_loss
from ltjax.losses._logit_adjusted import balanced_softmax_loss
from ltjax.losses._logit_adjusted import logit_adjusted_loss
from ltjax.losses._pairwise_margin import pairwise_margin_loss
from ltjax.losses._smoothing import label_over_smooth_loss
from ltjax.losses._weights import class_balanced_weights
from ltjax.losses._weights import drw_weights
from ltjax.losses._weights import weighted_mean
