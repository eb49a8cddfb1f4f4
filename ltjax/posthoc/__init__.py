"""Post-hoc corrections of a trained classifier: logit adjustment, tau-normalised weights and
GALA's prediction re-balancing. Pure numerics (jax and numpy only)."""
from ltjax.posthoc._logit_adjustment import adjust_logits
from ltjax.posthoc._rebalance import rebalance
from ltjax.posthoc._tau_norm import tau_normalize

__all__ = (
    "adjust_logits",
    "rebalance",
    "tau_normalize",
)
