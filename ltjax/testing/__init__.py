"""Property checks for long-tailed losses, to run on your own loss with pytest.

Each check takes a per-example loss `loss_fn(logits f[B, C], labels int[B], *, class_counts)
-> f[B]` (wrap extra hyperparameters with `functools.partial` or a lambda), raises
`AssertionError` with what failed, where and by how much, and otherwise returns a small report:

- `check_fisher_consistency`: the population-risk minimiser on a discrete problem is the balanced
  (or plain) Bayes rule (Menon et al., ICLR 2021, Theorem 1);
- `check_reduces_to`: equality with a reference at neutral hyperparameters;
- `check_shift_invariance`, `check_class_permutation_equivariance`;
- `check_gradients`: float64 finite differences (`jax.test_util.check_grads`) or a closed form;
- `check_transformations`: `jit`, `vmap`, `grad`, and a batch sharded over all devices;
- `check_finite_extremes`: |logits| = 1e4, bfloat16, an empty class, imbalance ratio 1e4;
- `check_no_gradient_to_statistics`;
- `check_all`: every applicable check in one call (`fail_fast=False` reports every failure);
- `method_loss` / `check_method`: any registered `ltjax.train.Method` as such a loss, checked.

`stateful_per_example` turns an init/loss/update triple (GALA) into the per-example form;
`strategies` holds hypothesis strategies for logits, labels and long-tailed counts (hypothesis is
imported only when a strategy is built). This module imports jax, numpy and optax only.
"""
from ltjax.testing import _strategies as strategies
from ltjax.testing._all import ChecksFailed
from ltjax.testing._all import check_all
from ltjax.testing._cases import Case
from ltjax.testing._cases import Report
from ltjax.testing._cases import draw_cases
from ltjax.testing._cases import longtail_counts
from ltjax.testing._fisher import FisherProblem
from ltjax.testing._fisher import FisherReport
from ltjax.testing._fisher import check_fisher_consistency
from ltjax.testing._fisher import population_minimiser
from ltjax.testing._method import check_method
from ltjax.testing._method import method_loss
from ltjax.testing._properties import ShardingCheckSkipped
from ltjax.testing._properties import check_class_permutation_equivariance
from ltjax.testing._properties import check_finite_extremes
from ltjax.testing._properties import check_gradients
from ltjax.testing._properties import check_no_gradient_to_statistics
from ltjax.testing._properties import check_reduces_to
from ltjax.testing._properties import check_shift_invariance
from ltjax.testing._properties import check_transformations
from ltjax.testing._stateful import stateful_per_example

__all__ = [
    "Case", "ChecksFailed", "FisherProblem", "FisherReport", "Report", "ShardingCheckSkipped",
    "check_all", "check_class_permutation_equivariance", "check_finite_extremes",
    "check_fisher_consistency", "check_gradients", "check_method",
    "check_no_gradient_to_statistics", "check_reduces_to", "check_shift_invariance",
    "check_transformations", "draw_cases", "longtail_counts", "method_loss",
    "population_minimiser", "stateful_per_example", "strategies",
]
