"""Flax Linen models: CIFAR ResNet-32 (He et al.), the LOS ResNet-34, a small CNN for 28x28
inputs, torchvision's ImageNet ResNet-50 / ResNeXt-50 32x4d / ResNet-152
(`load_torchvision_state_dict` loads their weights), and linear / cosine heads (tau-normalised
at evaluation through `tau_normalized_params`), with PyTorch-semantics BatchNorm and Flax <->
PyTorch `state_dict` conversion."""
from ltjax.models._batchnorm import BatchNorm
from ltjax.models._classifier import BACKBONES
from ltjax.models._classifier import Classifier
from ltjax.models._classifier import build_classifier
from ltjax.models._classifier import tau_normalized_params
from ltjax.models._convert import from_torch_state_dict
from ltjax.models._convert import to_torch_state_dict
from ltjax.models._heads import CosineHead
from ltjax.models._heads import LinearHead
from ltjax.models._imagenet_resnet import Bottleneck
from ltjax.models._imagenet_resnet import ImageNetResNet
from ltjax.models._imagenet_resnet import load_torchvision_state_dict
from ltjax.models._resnet import BasicBlock
from ltjax.models._resnet import ResNet32
from ltjax.models._resnet import ResNet34
from ltjax.models._resnet import option_a_shortcut
from ltjax.models._small import SmallCNN

__all__ = (
    "BACKBONES",
    "BasicBlock",
    "BatchNorm",
    "Bottleneck",
    "Classifier",
    "CosineHead",
    "ImageNetResNet",
    "LinearHead",
    "ResNet32",
    "ResNet34",
    "SmallCNN",
    "build_classifier",
    "from_torch_state_dict",
    "load_torchvision_state_dict",
    "option_a_shortcut",
    "tau_normalized_params",
    "to_torch_state_dict",
)
