"""A PyTorch ResNet-32 train step and CIFAR input pipeline, written only to benchmark ltjax against.

The network is He et al.'s CIFAR ResNet-32 exactly as `ltjax.models.ResNet32` builds it (and as the
LDAM-DRW code does): conv3x3(16) stem, three stages of 5 basic blocks at 16/32/64 channels,
option-A (strided, zero-padded) shortcuts, global average pooling, a linear head; bias-free
convolutions, BatchNorm2d defaults (momentum 0.1, eps 1e-5). The step is the usual
`zero_grad / forward / cross-entropy / backward / SGD(momentum 0.9, weight decay) step` in
NCHW float32, PyTorch's default layout for this code. The input pipeline is a `DataLoader` over a
`Dataset` applying torchvision's `RandomCrop(32, padding=4)`, `RandomHorizontalFlip()`,
`ToTensor()` and `Normalize(mean, std)` per image (torchvision itself is not installed here, so
the four transforms are written out below with the same semantics).

Import this module only when torch is installed (`pip install -e .[bench]`).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN + option-A shortcut, ReLU (NCHW)."""

  def __init__(self, in_planes: int, planes: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    # Option A: x[:, :, ::2, ::2] zero-padded with planes // 4 channels on each side.
    self.pad = planes // 4 if stride != 1 or in_planes != planes else None

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.pad is not None:
      x = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
    return F.relu(y + x)


class ResNet32(nn.Module):
  """CIFAR ResNet-32 (0.46 M parameters); `forward(x f32[B, 3, 32, 32]) -> logits f32[B, C]`."""

  def __init__(self, num_classes: int = 10, blocks_per_stage: int = 5,
               widths: tuple[int, ...] = (16, 32, 64)):
    super().__init__()
    self.conv = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
    self.bn = nn.BatchNorm2d(widths[0])
    blocks, in_planes = [], widths[0]
    for stage, planes in enumerate(widths):
      for block in range(blocks_per_stage):
        blocks.append(BasicBlock(in_planes, planes, 2 if stage > 0 and block == 0 else 1))
        in_planes = planes
    self.blocks = nn.Sequential(*blocks)
    self.fc = nn.Linear(widths[-1], num_classes)
    for m in self.modules():  # LDAM-DRW's _weights_init: Kaiming-normal convs and linear
      if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(m.weight)

  def forward(self, x):
    x = self.blocks(F.relu(self.bn(self.conv(x))))
    return self.fc(x.mean(dim=(2, 3)))


class TrainStep:
  """One SGD step of ResNet-32 on a batch: `step(images f32[B,3,32,32], labels i64[B]) -> loss`.

  Attributes:
    model: the `ResNet32` (train mode).
    optimizer: `torch.optim.SGD(lr, momentum, weight_decay)` (coupled decay, as ltjax's recipe).
  """

  def __init__(self, *, num_classes: int = 10, lr: float = 0.1, momentum: float = 0.9,
               weight_decay: float = 2e-4, seed: int = 0):
    torch.manual_seed(seed)
    self.model = ResNet32(num_classes).train()
    self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum,
                                     weight_decay=weight_decay)

  def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    self.optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(self.model(images), labels)
    loss.backward()
    self.optimizer.step()
    return loss.detach()


class AugmentedImages(torch.utils.data.Dataset):
  """`images u8[N, 32, 32, 3]` (NHWC, as ltjax keeps them) with torchvision's CIFAR training
  transforms per item: RandomCrop(32, padding=4) (zero fill), RandomHorizontalFlip(0.5),
  ToTensor (-> f32[3, 32, 32] in [0, 1]), Normalize(mean, std)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, mean, std, padding: int = 4):
    self.images = torch.from_numpy(np.ascontiguousarray(images))
    self.labels = torch.from_numpy(np.asarray(labels, np.int64))
    self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    self.padding = padding

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i):
    x = self.images[i].permute(2, 0, 1)  # ToTensor: HWC -> CHW
    h, w = x.shape[1:]
    p = self.padding
    x = F.pad(x, (p, p, p, p))
    top, left = np.random.randint(0, 2 * p + 1, size=2)
    x = x[:, top:top + h, left:left + w]
    if np.random.rand() < 0.5:
      x = x.flip(2)
    x = x.to(torch.float32).div_(255.0)
    return (x - self.mean) / self.std, self.labels[i]


def data_loader(images, labels, *, batch_size: int, mean, std, num_workers: int,
                seed: int = 0) -> torch.utils.data.DataLoader:
  """The usual shuffled, last-batch-dropping training loader over `AugmentedImages`."""
  generator = torch.Generator().manual_seed(seed)
  return torch.utils.data.DataLoader(
      AugmentedImages(images, labels, mean=mean, std=std), batch_size=batch_size, shuffle=True,
      drop_last=True, num_workers=num_workers, persistent_workers=num_workers > 0,
      generator=generator, worker_init_fn=_seed_worker)


def _seed_worker(worker_id: int) -> None:
  # numpy's global RNG is copied into every worker: reseed it from torch's per-worker seed.
  np.random.seed((torch.initial_seed() + worker_id) % 2**32)
