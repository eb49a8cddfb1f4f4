"""Long-tail evaluation metrics: confusion matrix, per-class / balanced / many-medium-few accuracy,
LOS's logits magnitude and regularized standard deviation, and expected calibration error.
Pure numerics (jax and numpy only)."""
from ltjax.metrics._accuracy import balanced_accuracy
from ltjax.metrics._accuracy import balanced_accuracy_score
from ltjax.metrics._accuracy import balanced_error
from ltjax.metrics._accuracy import balanced_error_score
from ltjax.metrics._accuracy import confusion_matrix
from ltjax.metrics._accuracy import per_class_accuracy
from ltjax.metrics._accuracy import per_class_accuracy_score
from ltjax.metrics._accuracy import shot_accuracy
from ltjax.metrics._accuracy import shot_accuracy_score
from ltjax.metrics._calibration import expected_calibration_error
from ltjax.metrics._logits_magnitude import logits_magnitude
from ltjax.metrics._logits_magnitude import regularized_std

__all__ = (
    "balanced_accuracy",
    "balanced_accuracy_score",
    "balanced_error",
    "balanced_error_score",
    "confusion_matrix",
    "expected_calibration_error",
    "logits_magnitude",
    "per_class_accuracy",
    "per_class_accuracy_score",
    "regularized_std",
    "shot_accuracy",
    "shot_accuracy_score",
)
