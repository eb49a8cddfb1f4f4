"""PyTorch replicas of the official training steps, written for the parity tests (float64).

Each piece names the file and commit of the official code it follows (docs/methods.md §0). They are
re-written from reading that code, not copied; they keep its order of operations where it
changes numbers (per-epoch lr and class weights, coupled weight decay, BN in train mode,
GALA's detach-then-backward of the logit gradient).

`Bugs` plants the mistakes the parity harness must catch (deliverable 4 of issue 11); the
default is the faithful replica.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DTYPE = torch.float64
# The networks are tiny: one thread avoids oversubscribing the CPU that JAX's threads share.
torch.set_num_threads(1)


@dataclasses.dataclass(frozen=True)
class Bugs:
  """Mistakes planted into a replica (all off = the official behaviour)."""
  bn_momentum_09: bool = False  # BN momentum 0.9 instead of PyTorch's 0.1
  biased_running_var: bool = False  # running_var updated with the biased batch variance
  decoupled_weight_decay: bool = False  # w -= lr * wd * w outside the momentum buffer
  drw_one_epoch_late: bool = False  # DRW weights from start_epoch + 1
  gala_single_accumulation: bool = False  # theta += |g| instead of P += F (F cumulative)
  ldam_margin_all_classes: bool = False  # z_j - m_j on every class j, not on the target only
  crt_stepped_at_end: bool = False  # cRT's cosine stepped after the epoch (LOS's order)
  ala_factor_swapped: bool = False  # the other quantity factor than the one asked for
  remainder_mean_over_batch_size: bool = False  # last partial batch's loss summed / full B
  prs_exponent_off: bool = False  # PRS divides by s_j^(tau + 0.5)
  gala_paper_target_adjusted: bool = False  # paper mode shifting the target logit too (code's)
  la_tau_outside_log: bool = False  # tau * log(pi + 1e-12) instead of log(pi^tau + 1e-12)


# --------------------------------------------------------------------------------------------
# BatchNorm (torch.nn.BatchNorm2d; the biased-variance variant is a planted bug)


class _BiasedRunningVarBN(nn.BatchNorm2d):
  """BatchNorm2d whose running variance takes the biased batch variance (Flax's behaviour)."""

  def forward(self, x):
    if not self.training:
      return super().forward(x)
    # F.batch_norm writes the (unbiased) update into a scratch copy of the running variance.
    scratch = self.running_var.clone()
    out = F.batch_norm(x, self.running_mean, scratch, self.weight, self.bias, True,
                       self.momentum, self.eps)
    with torch.no_grad():
      biased = x.var(dim=(0, 2, 3), unbiased=False)
      self.running_var.mul_(1 - self.momentum).add_(self.momentum * biased)
    return out


def _bn(planes: int, bugs: Bugs) -> nn.Module:
  cls = _BiasedRunningVarBN if bugs.biased_running_var else nn.BatchNorm2d
  return cls(planes, momentum=0.9 if bugs.bn_momentum_09 else 0.1)


# --------------------------------------------------------------------------------------------
# kaidic/LDAM-DRW @2536330, models/resnet_cifar.py: ResNet_s (option-A shortcuts), NormedLinear.
# Generalised to any widths / blocks per stage so the harness can run a narrow copy.


class NormedLinear(nn.Module):
  """Cosine head: normalize(x) @ normalize(W, dim=0), W [in, out], no bias, no scale."""

  def __init__(self, in_features, out_features):
    super().__init__()
    self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-1, 1))

  def forward(self, x):
    return F.normalize(x, dim=1).mm(F.normalize(self.weight, dim=0))


class _BlockA(nn.Module):
  def __init__(self, in_planes, planes, stride, bugs):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
    self.bn1 = _bn(planes, bugs)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
    self.bn2 = _bn(planes, bugs)
    self.pad = planes // 4 if (stride != 1 or in_planes != planes) else None

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    # Option A: subsample, then zero-pad planes // 4 channels on both sides.
    short = x if self.pad is None else F.pad(x[:, :, ::2, ::2],
                                             (0, 0, 0, 0, self.pad, self.pad))
    return F.relu(out + short)


class ResNetS(nn.Module):
  """ResNet_s: conv3x3 stem, stages of option-A basic blocks, global average pool, head
  `linear` (nn.Linear, or NormedLinear when `cosine`)."""

  def __init__(self, num_classes, *, blocks=5, widths=(16, 32, 64), cosine=False,
               bugs=Bugs()):
    super().__init__()
    self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
    self.bn1 = _bn(widths[0], bugs)
    in_planes = widths[0]
    for s, planes in enumerate(widths):
      layer = []
      for j in range(blocks):
        layer.append(_BlockA(in_planes, planes, 2 if (s > 0 and j == 0) else 1, bugs))
        in_planes = planes
      setattr(self, f"layer{s + 1}", nn.Sequential(*layer))
    self.num_stages = len(widths)
    self.linear = (NormedLinear if cosine else nn.Linear)(widths[-1], num_classes)

  def features(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    for s in range(self.num_stages):
      out = getattr(self, f"layer{s + 1}")(out)
    return F.avg_pool2d(out, out.size()[3]).flatten(1)

  def forward(self, x):
    return self.linear(self.features(x))


# --------------------------------------------------------------------------------------------
# Thinklab-SJTU/LOS @f449425, models/resnet.py: ResNet(BasicBlock, [3, 4, 6, 3]), pool_size 4,
# 1x1-conv+BN `downsample`, `fc`. Generalised to any widths / stage sizes.


class _BlockB(nn.Module):
  def __init__(self, inplanes, planes, stride, bugs):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
    self.bn1 = _bn(planes, bugs)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
    self.bn2 = _bn(planes, bugs)
    self.downsample = None
    if stride != 1 or inplanes != planes:
      self.downsample = nn.Sequential(
          nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), _bn(planes, bugs))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    residual = x if self.downsample is None else self.downsample(x)
    return F.relu(out + residual)


class ResNetLOS(nn.Module):
  def __init__(self, num_classes, *, stage_sizes=(3, 4, 6, 3), widths=(64, 128, 256, 512),
               pool_size=4, bugs=Bugs()):
    super().__init__()
    self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
    self.bn1 = _bn(widths[0], bugs)
    inplanes = widths[0]
    for s, (n, planes) in enumerate(zip(stage_sizes, widths)):
      layer = []
      for j in range(n):
        layer.append(_BlockB(inplanes, planes, 2 if (s > 0 and j == 0) else 1, bugs))
        inplanes = planes
      setattr(self, f"layer{s + 1}", nn.Sequential(*layer))
    self.num_stages = len(widths)
    self.pool_size = pool_size
    self.fc = nn.Linear(widths[-1], num_classes)

  def features(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    for s in range(self.num_stages):
      out = getattr(self, f"layer{s + 1}")(out)
    return F.avg_pool2d(out, self.pool_size).flatten(1)

  def forward(self, x):
    return self.fc(self.features(x))


# --------------------------------------------------------------------------------------------
# Losses


def cb_weights(counts, beta):
  """kaidic cifar_train.py @2536330 (train_rule Reweight / DRW): (1 - b) / (1 - b^n),
  normalised to sum C, in float64 (NumPy)."""
  effective = 1.0 - np.power(beta, np.asarray(counts, np.float64))
  w = (1.0 - beta) / effective
  return w / np.sum(w) * len(counts)


def ldam_loss(cosine, target, counts, *, max_m, s, weight, all_classes=False):
  """kaidic losses.py @2536330 LDAMLoss: margin m_y on the target cosine, CE(s * out, w)."""
  m = 1.0 / np.sqrt(np.sqrt(np.asarray(counts, np.float64)))
  m = torch.as_tensor(m * (max_m / np.max(m)), dtype=DTYPE)
  index = F.one_hot(target, cosine.shape[1]).bool()
  if all_classes:  # planted bug: every class j gets its own margin m_j
    out = cosine - m[None, :]
  else:
    out = torch.where(index, cosine - m[target][:, None], cosine)
  return F.cross_entropy(s * out, target, weight=weight)


def focal_loss(logits, target, *, gamma, weight):
  """kaidic losses.py @2536330 (after 3193f05 "Fix focal"): per-example CE (weighted),
  p = exp(-ce), mean((1 - p)^gamma * ce)."""
  ce = F.cross_entropy(logits, target, reduction="none", weight=weight)
  return ((1 - torch.exp(-ce)) ** gamma * ce).mean()


def balanced_softmax_loss(logits, target, counts):
  """BalancedMetaSoftmax @34a61e4 loss/BalancedSoftmaxLoss.py: CE(z + log n), mean."""
  spc = torch.as_tensor(np.asarray(counts, np.float64), dtype=DTYPE)
  return F.cross_entropy(logits + spc.log()[None, :], target)


def la_adjustment(counts, tau, *, tau_outside_log=False):
  """google-research logit_adjustment @1d4d2f1 (utils.py, main.py): `log(base_probs ** tau +
  1e-12)`, base_probs = counts / N. `tau_outside_log` plants `tau * log(pi + 1e-12)`."""
  pi = np.asarray(counts, np.float64) / np.sum(counts)
  if tau_outside_log:
    return tau * np.log(pi + 1e-12)
  return np.log(pi ** tau + 1e-12)


def la_loss(logits, target, counts, *, tau, tau_outside_log=False):
  """google-research logit_adjustment @1d4d2f1 utils.py: CE(z + log(pi^tau + 1e-12))."""
  adj = torch.as_tensor(la_adjustment(counts, tau, tau_outside_log=tau_outside_log),
                        dtype=DTYPE)
  return F.cross_entropy(logits + adj[None, :], target)


def eql_loss(logits, target, counts, *, lambda_, beta_mask):
  """lt-project @1eea15d loss/EQV1SoftmaxLoss.py, with the `torch.rand(B, C) < gamma` draw
  replaced by the given boolean `beta_mask [B, C]` (the same draw as ltjax's, fixed on both
  sides): w = 1 - beta * T * (1 - onehot), CE(z + log w)."""
  n_b, n_c = logits.shape
  freq = torch.as_tensor(np.asarray(counts, np.float64), dtype=DTYPE)
  ratio = freq / freq.sum()
  target_oh = logits.new_zeros(n_b, n_c)
  target_oh[torch.arange(n_b), target] = 1
  threshold = logits.new_zeros(n_c)
  threshold[ratio < lambda_] = 1
  beta = torch.tensor(np.array(beta_mask), dtype=DTYPE)
  w = 1 - beta * threshold[None, :] * (1 - target_oh)
  return F.cross_entropy(logits + torch.log(w), target)


def ala_loss(scaled, target, counts, *, s, weight, quantity_factor):
  """liming-ai/OpenLT @52a0dc2 (unchanged at HEAD 33fa2a9) model/loss.py ALALoss, lines
  351-421: input s*cos, hardness (1 - x/s)/2 and the quantity factor on the target only,
  detached; CE(weight). `quantity_factor="openlt"` is its live line 363, log(2) / log(n / n_min
  + 1); "paper" the line 364 it leaves commented out, 1 / log(n / n_min + 1)."""
  n = torch.as_tensor(np.asarray(counts, np.float64), dtype=DTYPE)
  num = 1.0 if quantity_factor == "paper" else math.log(2)
  m_list = num / torch.log(n / n.min() + 1)
  index = F.one_hot(target, scaled.shape[1]).to(DTYPE)
  hardness = ((1 - scaled / s) / 2.0 * index).detach()
  adjust = (m_list[target].unsqueeze(-1) * index).detach()
  return F.cross_entropy(scaled - hardness * adjust * s, target, weight=weight)


def los_loss(logits, target, *, delta):
  """Thinklab-SJTU/LOS @f449425 main_stage2.py: nn.CrossEntropyLoss(label_smoothing=delta)."""
  return F.cross_entropy(logits, target, label_smoothing=delta)


# --------------------------------------------------------------------------------------------
# Learning-rate schedules (per epoch, as the official loops set them)


def ldam_lr(epoch, *, base_lr, warmup_epochs, decay_epochs, decay):
  """kaidic cifar_train.py @2536330 adjust_learning_rate (epoch 0-based, e = epoch + 1); the
  warm-up length, decay epochs and factor are the harness's overrides of 5, (160, 180), 0.01."""
  e = epoch + 1
  if e <= warmup_epochs:
    return base_lr * e / warmup_epochs
  if e > decay_epochs[1]:
    return base_lr * decay * decay
  if e > decay_epochs[0]:
    return base_lr * decay
  return base_lr


def gala_lr(epoch, *, num_epochs, base_lr, warmup_lr, warmup_epochs):
  """lt-project @1eea15d utils.py CosineAnnealingLRWarmup (eta_min 0), `scheduler.step()` at
  the start of each epoch, so epoch k (0-based) trains at `last_epoch = k + 1`."""
  last = epoch + 1
  if last < warmup_epochs:
    return ((warmup_lr - base_lr) / (warmup_epochs - 1) * (last - 1) + base_lr) / base_lr * base_lr
  cos = (1 + math.cos(math.pi * (last - warmup_epochs) / (num_epochs - warmup_epochs))) / 2
  return (warmup_lr * cos) / base_lr * base_lr


def cosine_lr(epoch, *, num_epochs, base_lr):
  """torch CosineAnnealingLR(T_max, eta_min=0) stepped at each epoch's end (LOS @f449425
  main_stage1.py / main_stage2.py: `scheduler.step()` after `train_base`): closed form at
  epoch k."""
  return base_lr * (1 + math.cos(math.pi * epoch / num_epochs)) / 2


def crt_lr(epoch, *, num_epochs, base_lr):
  """facebookresearch/classifier-balancing @f162ade run_networks.py `train()`: for epoch in
  1..num_epochs, `self.model_optimizer_scheduler.step()` runs first, then the epoch's batches;
  the scheduler is `CosineAnnealingLR(T_max=num_epochs, eta_min=0)` (`coslr: true`, cRT's
  ImageNet-LT / iNat configs). Computed with torch's own scheduler: epoch k (0-based) trains at
  the lr after k + 1 steps."""
  param = torch.zeros(1, requires_grad=True)
  opt = torch.optim.SGD([param], lr=base_lr)
  sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, num_epochs, eta_min=0.0)
  for _ in range(epoch + 1):
    opt.step()  # (no gradient: keeps torch from warning about the order)
    sched.step()
  return opt.param_groups[0]["lr"]


# --------------------------------------------------------------------------------------------
# Training steps


class StepReplica:
  """One optimizer step of an official loop on `model`, from loaded weights and momentum.

  `loop`:
    * "ldam": kaidic cifar_train.py @2536330 `train()`: per-epoch lr and criterion
      (train_rule None / Reweight / DRW), `SGD(lr, momentum, weight_decay)` over all params.
      Losses: ce, focal, ldam, balanced_softmax, la, eql, ala (the other codes' losses on this
      loop, as issue 11 asks).
    * "gala": lt-project @1eea15d run_networks.py `batch_forward` / `batch_loss` /
      `batch_backward` / `collect_grad` with models/DotProductClassifier.py (`pos_grad` margin).
    * "stage2": LOS @f449425 main_stage2.py + train/train.py `train_base` (also cRT, the
      classifier-balancing code in BALMS/GALA): `model.train()` (BN batch statistics and
      running-stat updates), SGD over the head only.
  """

  def __init__(self, model, *, loop, loss, counts, hp, lr_fn, momentum, weight_decay,
               steps_per_epoch, head_name, nesterov=False, bugs=Bugs(), batch_size=None):
    self.model = model.to(DTYPE)
    self.batch_size = batch_size  # the loader's batch size (a smaller batch is the remainder)
    self.loop, self.loss, self.hp, self.bugs = loop, loss, hp, bugs
    self.counts = np.asarray(counts, np.float64)
    self.lr_fn, self.steps_per_epoch = lr_fn, steps_per_epoch
    self.weight_decay = weight_decay
    head = getattr(self.model, head_name)
    params = list(head.parameters()) if loop == "stage2" else list(self.model.parameters())
    if loop == "stage2":  # main_stage2.py: optim.SGD(model.fc.parameters(), ...)
      for p in self.model.parameters():
        p.requires_grad_(False)
      for p in head.parameters():
        p.requires_grad_(True)
    wd = 0.0 if bugs.decoupled_weight_decay else weight_decay
    self.optimizer = torch.optim.SGD(params, lr=0.1, momentum=momentum, weight_decay=wd,
                                     nesterov=nesterov)
    self.names = {p: n for n, p in self.model.named_parameters()}
    self.trained = [self.names[p] for p in params]

  # -- state in / out (torch state_dict names; NumPy arrays)
  def load(self, state_dict, momentum):
    sd = {k: torch.as_tensor(np.asarray(v)) for k, v in state_dict.items()}
    sd = {k: (v.to(DTYPE) if v.is_floating_point() else v) for k, v in sd.items()}
    self.model.load_state_dict(sd, strict=True)
    self.optimizer.state.clear()
    params = dict(self.model.named_parameters())
    for name in self.trained:
      if name in momentum:  # (evaluation-only loads of a head-only optimizer state skip it)
        self.optimizer.state[params[name]]["momentum_buffer"] = torch.as_tensor(
            np.array(momentum[name]), dtype=DTYPE)

  def export(self):
    sd = {k: v.detach().numpy().copy() for k, v in self.model.state_dict().items()}
    params = dict(self.model.named_parameters())
    mom = {n: self.optimizer.state[params[n]]["momentum_buffer"].numpy().copy()
           for n in self.trained}
    return sd, mom

  # -- the per-epoch quantities of the official loops
  def class_weights(self, epoch):
    hp = self.hp
    if self.loss in ("cb",):  # train_rule Reweight
      return torch.as_tensor(cb_weights(self.counts, hp["cb_beta"]), dtype=DTYPE)
    if self.loss in ("ce_drw", "ldam", "ala"):  # train_rule DRW: betas[epoch // start]
      start = hp["drw_start_epoch"] + (1 if self.bugs.drw_one_epoch_late else 0)
      beta = [0.0, hp["cb_beta"]][min(epoch // start, 1)]
      return torch.as_tensor(cb_weights(self.counts, beta), dtype=DTYPE)
    return None

  def criterion(self, out, y, epoch, extra):
    hp, counts = self.hp, self.counts
    w = self.class_weights(epoch)
    if self.loss in ("ce", "cb", "ce_drw"):
      return F.cross_entropy(out, y, weight=w)
    if self.loss == "focal":
      return focal_loss(out, y, gamma=hp["focal_gamma"], weight=w)
    if self.loss == "ldam":
      return ldam_loss(out, y, counts, max_m=hp["ldam_max_margin"], s=hp["scale"], weight=w,
                       all_classes=self.bugs.ldam_margin_all_classes)
    if self.loss == "balanced_softmax":
      return balanced_softmax_loss(out, y, counts)
    if self.loss == "la":
      return la_loss(out, y, counts, tau=hp["tau"], tau_outside_log=self.bugs.la_tau_outside_log)
    if self.loss == "eql":
      return eql_loss(out, y, counts, lambda_=hp["eql_threshold"], beta_mask=extra["eql_mask"])
    if self.loss == "ala":
      # OpenLT feeds s * cos from its NormedLinear model.
      factor = hp["ala_quantity_factor"]
      if self.bugs.ala_factor_swapped:
        factor = {"paper": "openlt", "openlt": "paper"}[factor]
      return ala_loss(hp["scale"] * out, y, counts, s=hp["scale"], weight=w,
                      quantity_factor=factor)
    if self.loss == "los":
      return los_loss(out, y, delta=hp["los_delta"])
    raise ValueError(self.loss)

  def _sgd_step(self, lr):
    for group in self.optimizer.param_groups:
      group["lr"] = lr
    olds = None
    if self.bugs.decoupled_weight_decay:
      olds = {p: p.detach().clone() for g in self.optimizer.param_groups for p in g["params"]}
    self.optimizer.step()
    if olds is not None:
      with torch.no_grad():
        for p, old in olds.items():
          p.sub_(lr * self.weight_decay * old)

  def step(self, x, y, step_index, extra=None):
    """One training step on the batch `x f64[B, 3, H, W]`, `y i64[B]`; returns the loss."""
    extra = extra or {}
    epoch = step_index // self.steps_per_epoch
    lr = self.lr_fn(epoch)
    x = torch.tensor(np.asarray(x), dtype=DTYPE)
    y = torch.tensor(np.asarray(y), dtype=torch.int64)
    self.model.train()
    if self.loop == "gala":
      loss = self._gala_step(x, y, lr, extra)
      return loss
    out = self.model(x)
    # DataLoader(drop_last=False)'s last batch is a batch like any other: the criterion's mean
    # runs over its own examples (kaidic cifar_train.py / LOS train_base). The planted bug
    # divides its sum by the full batch size instead.
    loss = self.criterion(out, y, epoch, extra)
    if self.bugs.remainder_mean_over_batch_size and x.shape[0] < self.batch_size:
      loss = loss * x.shape[0] / self.batch_size
    self.optimizer.zero_grad()
    loss.backward()
    self._sgd_step(lr)
    return float(loss.detach())

  # -- GALA: lt-project @1eea15d
  def _gala_step(self, x, y, lr, extra):
    """`extra["gala"]` holds the official state `(F, P_pos, P_neg)` as [C, C] float64 arrays;
    it is updated in place of the caller's copy and returned there."""
    Fm, Ppos, Pneg = (torch.tensor(np.asarray(a), dtype=DTYPE) for a in extra["gala"])
    hp = self.hp
    feats = self.model.features(x)
    # run_networks.batch_forward: classifier(features, accum_cls_pos_grad + 1e-3,
    # accum_sample_neg_grad, labels); DotProduct_Classifier.forward with margin_mode pos_grad.
    pos_grad = Ppos.sum(dim=1) + 1e-3
    neg = Pneg.sum(dim=0)
    shift = (hp["gala_lam1"] * torch.log(pos_grad)[None, :]
             - hp["gala_lam2"] * torch.log(neg[y].unsqueeze(1) + 1e-3))
    if hp["gala_mode"] == "paper" and not self.bugs.gala_paper_target_adjusted:
      # lt-project @1eea15d formula.svg (the paper's eq.): F_j = w_j x + lam1 log theta_j
      # - lam2 log phi_k for j != k (k the label), F_k = w_k x; the same state and its 1e-3.
      shift = torch.where(F.one_hot(y, shift.shape[1]).bool(), torch.zeros_like(shift), shift)
    logits = self.model.linear(feats) + shift
    # batch_loss: the loss on a detached copy; batch_backward: its grad is collected, then fed
    # back through the network.
    detached = logits.detach().requires_grad_(True)
    loss = F.cross_entropy(detached, y)
    self.optimizer.zero_grad()
    loss.backward()
    g = detached.grad
    absg = g.abs()
    C = Fm.shape[0]
    eye = torch.eye(C, dtype=DTYPE)
    if self.bugs.gala_single_accumulation:
      step_F = torch.zeros_like(Fm)
      for i in range(x.shape[0]):
        step_F[:, y[i]] += absg[i]
      Fm = Fm + step_F
      Ppos = Ppos + step_F * eye
      Pneg = Pneg + step_F * (1 - eye)
    else:  # collect_grad
      for i in range(x.shape[0]):
        Fm[:, y[i]] += absg[i]
      Ppos = Ppos + Fm * eye
      Pneg = Pneg + Fm * (1 - eye)
    logits.backward(g)
    self._sgd_step(lr)
    extra["gala"] = tuple(a.numpy().copy() for a in (Fm, Ppos, Pneg))
    return float(loss.detach())


# --------------------------------------------------------------------------------------------
# Evaluation


def normalize(images_u8, mean, std):
  """torchvision ToTensor + Normalize(mean, std) on uint8 NHWC images -> f64 NCHW."""
  x = np.asarray(images_u8, np.float64) / 255.0
  x = (x - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)
  return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


@torch.no_grad()
def flip_tta_logits(model, x):
  """LOS @f449425 train/validate.py `horizontal_flip_aug`: (model(x) + model(x.flip(3))) / 2,
  in eval mode."""
  model.eval()
  return ((model(x) + model(x.flip(3))) / 2).numpy()


@torch.no_grad()
def eval_logits(model, x):
  model.eval()
  return model(x).numpy()


@torch.no_grad()
def tau_norm_logits(model, x, head, tau):
  """lt-project @1eea15d tau_norm.py: `pnorm(weights, p)` divides each class row W_c by
  ||W_c||_2^p; logits = feat @ ws.T (no bias), on eval-mode features."""
  model.eval()
  weights = getattr(model, head).weight
  norms = torch.norm(weights, 2, 1)
  ws = weights.clone()
  for i in range(weights.size(0)):
    ws[i] = ws[i] / torch.pow(norms[i], tau)
  return torch.mm(model.features(x), ws.t()).numpy()


def prs_scores(logits, tau, *, exponent_off=False):
  """lt-project @1eea15d run_networks.py `eval` (lines 1058-1062, `norm_logits: true`): on the
  whole set's logits, `probs = softmax(Z)`, `norm = probs.norm(dim=0, p=1)`, `new_logits = probs /
  norm ** pow_for_logits`; the prediction is its argmax (the softmax after it keeps the order).
  Returns `new_logits`. `exponent_off` plants `pow_for_logits + 0.5`."""
  z = torch.as_tensor(np.asarray(logits), dtype=DTYPE)
  probs = F.softmax(z, dim=1)
  norm = probs.norm(dim=0, p=1).unsqueeze(0).expand(z.shape[0], -1)
  return (probs / torch.pow(norm, tau + (0.5 if exponent_off else 0.0))).numpy()


def posthoc_la_logits(logits, counts, tau, *, tau_outside_log=False):
  """google-research logit_adjustment @1d4d2f1 main.py (--mode=posthoc):
  logits - log(base_probs ** tau + 1e-12)."""
  return logits - la_adjustment(counts, tau, tau_outside_log=tau_outside_log)


# --------------------------------------------------------------------------------------------
# Long-tailed subsets


def img_num_per_cls(num_examples, cls_num, imb_factor):
  """kaidic imbalance_cifar.py @2536330 / LOS datasets/Cifar100LT.py @f449425
  `get_img_num_per_cls` ('exp'): int(img_max * imb_factor ** (i / (C - 1)))."""
  img_max = num_examples / cls_num
  return [int(img_max * (imb_factor ** (i / (cls_num - 1.0)))) for i in range(cls_num)]


def ldam_subset(targets, img_nums, rand_number=0):
  """kaidic imbalance_cifar.py @2536330: `np.random.seed(rand_number)`, then per class (in
  np.unique order) `np.random.shuffle(idx)`, keep `idx[:n]`. NumPy's global RNG is restored."""
  saved = np.random.get_state()
  try:
    np.random.seed(rand_number)
    targets = np.asarray(targets, np.int64)
    kept = []
    for c, n in zip(np.unique(targets), img_nums):
      idx = np.where(targets == c)[0]
      np.random.shuffle(idx)
      kept.append(idx[:n])
    return np.concatenate(kept)
  finally:
    np.random.set_state(saved)


def los_subset(targets, img_nums, *, bug_ldam_split=False):
  """LOS datasets/Cifar100LT.py @f449425 `gen_imbalanced_data`: the shuffle is commented out,
  so each class keeps its first n images in file order. `bug_ldam_split` plants the LDAM
  protocol (seeded shuffle) instead."""
  if bug_ldam_split:
    return ldam_subset(targets, img_nums)
  targets = np.asarray(targets, np.int64)
  return np.concatenate([np.where(targets == c)[0][:n]
                         for c, n in zip(np.unique(targets), img_nums)])
