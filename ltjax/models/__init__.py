"""Flax Linen models: CIFAR ResNet-32 (He et al.), the LOS ResNet-34, a small CNN for 28x28
inputs, and linear / cosine heads (tau-normalised at evaluation through `tau_normalized_params`),
with PyTorch-semantics BatchNorm and Flax <-> PyTorch `state_dict` conversion."""
from ltjax.models._batchnorm import BatchNorm
from ltjax.models._classifier import BACKBONES
from ltjax.models._classifier import Classifier
from ltjax.models._classifier import build_classifier
from ltjax.models._classifier import tau_normalized_params
from ltjax.models._convert import from_torch_state_dict
from ltjax.models._convert import to_torch_state_dict
from ltjax.models._heads import CosineHead
from ltjax.models._heads import LinearHead
from ltjax.models._resnet import BasicBlock
from ltjax.models._resnet import ResNet32
from ltjax.models._resnet import ResNet34
from ltjax.models._resnet import option_a_shortcut
from ltjax.models._small import SmallCNN

__all__ = (
    "BACKBONES",
    "BasicBlock",
    "BatchNorm",
    "Classifier",
    "CosineHead",
    "LinearHead",
    "ResNet32",
    "ResNet34",
    "SmallCNN",
    "build_classifier",
    "from_torch_state_dict",
    "option_a_shortcut",
    "tau_normalized_params",
    "to_torch_state_dict",
)
