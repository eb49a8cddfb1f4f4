"""What the recipes name rather than spell out: augmentation presets and the datasets'
normalisation constants (one place each; the experiment configs refer to them by name).
"""
from __future__ import annotations

from ltjax.data import _augment

# Training augmentations by name: arguments of `ltjax.data.augment` / `DevicePipeline`
# (torchvision's RandomCrop(32, padding=4), RandomHorizontalFlip, AutoAugment's CIFAR10Policy,
# Cutout, in that order).
AUGMENTATIONS = {
    "none": {"crop_padding": 0, "flip": False, "cutout_size": 0},
    "crop_flip": {"crop_padding": 4, "flip": True, "cutout_size": 0},
    "crop_flip_cutout": {"crop_padding": 4, "flip": True, "cutout_size": 16},
    "crop_flip_autoaugment": {"crop_padding": 4, "flip": True, "cutout_size": 0,
                              "autoaugment": True},
    # GALA / BALMS CIFAR: RandomCrop, RandomHorizontalFlip, CIFAR10Policy, Cutout(1, 16).
    "crop_flip_autoaugment_cutout": {"crop_padding": 4, "flip": True, "cutout_size": 16,
                                     "autoaugment": True},
}

# Augmentations of the list datasets, done while decoding on the host (torchvision's
# RandomResizedCrop(image_size) + RandomHorizontalFlip; `ltjax.data.decode_random_resized_crop`).
HOST_AUGMENTATIONS = ("random_resized_crop_flip",)

# Per-channel mean / std of x / 255 that the recipes normalise with (CIFAR: the LDAM/GALA/LOS
# code's constants; Fashion-MNIST: its training set's statistics). Other array datasets use their
# long-tailed training images' own statistics.
NORMALIZATION = {
    "cifar10": (_augment.CIFAR_MEAN, _augment.CIFAR_STD),
    "cifar100": (_augment.CIFAR_MEAN, _augment.CIFAR_STD),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}
