"""The parity harness: ltjax's real train step (as `experiments.experiment.build_experiment` builds
it from a recipe, the registry and config overrides) against a PyTorch replica of the official step,
teacher-forced, in float64.

At every step t: ltjax's state s_t is converted to the official `state_dict` names
(`ltjax.models.to_torch_state_dict`), the replica takes one step on the same batch (ltjax's epoch
order and augmented images, exported as arrays) and its loss, updated parameters, momentum buffers,
BN running statistics and loss state are compared with ltjax's s_{t+1}; then both continue from
ltjax's s_{t+1}.
"""
from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ltjax
from experiments import experiment as ltrain
from experiments.configs import gala_r32
from experiments.configs import ldam_r32
from experiments.configs import los_r34
from ltjax import checkpointing
from ltjax import models
from ltjax.losses import _eql
from parity import torch_replicas as tr

RECIPES = {"ldam_r32": ldam_r32.get_config, "gala_r32": gala_r32.get_config,
           "los_r34": los_r34.get_config}
RTOL = 1e-10
# GALA's statistics are float32 in ltjax (documented in ltjax/losses/_gala.py) and in the official
# code (torch.zeros on the device); the step's loss and update use them exactly.
GALA_STATE_RTOL = 1e-5

# Narrow networks keep the float64 suite within its CPU budget; the full widths are covered by
# the conversion tests (tests/parity/test_parity_convert.py).
R32_KWARGS = {"blocks_per_stage": 1, "widths": (4, 8, 16)}
R34_KWARGS = {"stage_sizes": (1, 1, 1, 1), "widths": (4, 8, 16, 32)}


@functools.cache
def synthetic_splits(*, num_classes=10, max_per_class=25, imbalance_ratio=10.0, batch_size=16,
                     seed=0, remainder=0) -> ltrain.Splits:
  """A CIFAR-shaped long-tailed training set of random uint8 images, its size cut to a multiple
  of `batch_size` (full batches only) by trimming the head class, plus `remainder` (< batch_size)
  examples of the head class: an epoch that keeps its last partial batch ends with a step of
  `remainder` examples. Cached, so that every test module shares one object and the
  experiments built on it (`build` caches them)."""
  counts = np.array(ltjax.data.longtail_counts(max_per_class, num_classes,
                                               imbalance_ratio=imbalance_ratio))
  counts[0] -= int(counts.sum()) % batch_size
  counts[0] += remainder
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(num_classes), counts).astype(np.int64)
  labels = labels[rng.permutation(labels.size)]
  images = rng.integers(0, 256, (labels.size, 32, 32, 3), dtype=np.uint8)
  test = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
  return ltrain.Splits(train_images=images, train_labels=labels, test_images=test,
                       test_labels=rng.integers(0, num_classes, 40),
                       class_counts=counts, fingerprint="synthetic",
                       mean=ltjax.data.CIFAR_MEAN, std=ltjax.data.CIFAR_STD)


def make_config(recipe: str, method: str, overrides: dict, *, stage: str | None = None):
  config = RECIPES[recipe](stage) if stage else RECIPES[recipe]()
  config.method = method
  config.val_per_class = 0
  for key, value in overrides.items():
    target, *path = key.split(".")
    node = config
    for part in [target, *path][:-1]:
      node = node[part]
    node[[target, *path][-1]] = value
  return config


def _to_x64(tree):
  return jax.tree.map(
      lambda x: np.asarray(x, np.float64) if np.issubdtype(np.asarray(x).dtype, np.floating)
      else np.asarray(x), tree)


def build_experiment(config, splits):
  """`experiments.experiment.build_experiment` on a one-device mesh (the CLI on a one-device host):
  the test session simulates 8 CPU devices, and SPMD-partitioning every float64 step for them
  would cost the suite minutes of compilation for nothing this test checks."""
  return ltrain.build_experiment(config, splits, mesh=ltjax.train.data_mesh(jax.devices()[:1]))


def save_stage1(config, splits, directory):
  """Writes the step-0 state of `config` (a joint recipe) as a stage-1 checkpoint."""
  exp = build_experiment(config, splits)
  with checkpointing.Checkpointer(os.path.join(directory, ltrain.CHECKPOINT_DIR)) as ckpt:
    ckpt.save(exp.state, metadata={"epoch": 0})
  return directory


@dataclasses.dataclass
class Trace:
  """What one teacher-forced run measured (worst relative error over the steps, per quantity)."""
  steps: int
  errors: dict
  losses: list
  lrs: list


def _find_trace(opt_state):
  leaves = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.TraceState))
  traces = [x for x in leaves if isinstance(x, optax.TraceState)]
  assert len(traces) == 1, f"expected one momentum trace in the optimizer state, got {len(traces)}"
  return traces[0].trace


def torch_view(state, *, arch, head_prefix):
  """ltjax's state as (state_dict, momentum by param name) in the official names."""
  params, stats = jax.device_get((state.params, state.batch_stats))
  sd = models.to_torch_state_dict(params, stats, arch=arch, head_prefix=head_prefix)
  trace = jax.device_get(_find_trace(state.opt_state))
  if "backbone" in trace and not isinstance(trace["backbone"], optax.MaskedNode):
    mom = models.to_torch_state_dict(trace, stats, arch=arch, head_prefix=head_prefix)
  else:  # stage 2: only the head has a buffer
    fake = {"backbone": params["backbone"], "head": trace["head"]}
    mom = models.to_torch_state_dict(fake, stats, arch=arch, head_prefix=head_prefix)
    mom = {k: v for k, v in mom.items() if k.startswith(f"{head_prefix}.")}
  return sd, mom


def gala_to_official(loss_state):
  """ltjax's per-class GALA reductions as official [C, C] matrices with the same reductions:
  F has `grad_pos` on its diagonal and `grad_neg[c]` at (c + 1 mod C, c); P_pos = diag(theta);
  P_neg holds `phi[c]` at (c + 1 mod C, c). The official code only reads diag / column sums."""
  s = jax.device_get(loss_state)
  c = s.theta.shape[0]
  rows = (np.arange(c) + 1) % c
  F = np.diag(np.asarray(s.grad_pos, np.float64))
  F[rows, np.arange(c)] += np.asarray(s.grad_neg, np.float64)
  Ppos = np.diag(np.asarray(s.theta, np.float64))
  Pneg = np.zeros((c, c))
  Pneg[rows, np.arange(c)] = np.asarray(s.phi, np.float64)
  return F, Ppos, Pneg


def gala_from_official(F, Ppos, Pneg):
  eye = np.eye(F.shape[0])
  return {"grad_pos": np.diag(F), "grad_neg": (F * (1 - eye)).sum(0),
          "theta": np.diag(Ppos), "phi": (Pneg * (1 - eye)).sum(0)}


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  scale = np.linalg.norm(b)
  diff = np.linalg.norm(a - b)
  return 0.0 if diff == 0 else diff / max(scale, 1e-300)


@dataclasses.dataclass
class Run:
  """A built ltjax experiment in float64, and the replica factory that mirrors it."""
  exp: object
  config: object
  arch: str
  head_prefix: str
  replica: tr.StepReplica
  state: object  # host copy of the float64 step-0 state
  batch_fn: object  # the jitted gather + augmentation + normalisation of the CLI


REPLICA_LOSS = {"ce": "ce", "focal": "focal", "cb": "cb", "ce_drw": "ce_drw", "ldam_drw": "ldam",
                "balanced_softmax": "balanced_softmax", "la_loss": "la", "la_posthoc": "ce",
                "eql": "eql", "gala": "ce", "gala_prs": "ce", "ala": "ala", "los": "los",
                "crt": "ce", "tau_norm": "ce"}


def lr_fn_for(config, steps_per_epoch, bugs=None):
  lr = config.lr.to_dict()
  name = lr.pop("name")
  if name == "cosine" and config.method == "crt" and not (bugs and bugs.crt_stepped_at_end):
    # cRT's loop is classifier-balancing's run_networks.py (scheduler stepped at epoch start).
    return functools.partial(tr.crt_lr, num_epochs=config.num_epochs, base_lr=lr["base_lr"])
  if name == "ldam":
    return functools.partial(tr.ldam_lr, base_lr=lr["base_lr"], warmup_epochs=lr["warmup_epochs"],
                             decay_epochs=tuple(lr["decay_epochs"]), decay=lr["decay"])
  if name == "gala":
    return functools.partial(tr.gala_lr, num_epochs=config.num_epochs, **lr)
  if name == "cosine":
    return functools.partial(tr.cosine_lr, num_epochs=config.num_epochs, base_lr=lr["base_lr"])
  raise ValueError(name)


# Built experiments, reused by the planted-bug tests (the ltjax side does not change with the
# replica's bugs, and its float64 step costs seconds to compile).
_EXPERIMENTS = {}


def _experiment(recipe, method, overrides, splits, stage, init_dir):
  key = (recipe, method, repr(sorted(overrides.items())), id(splits), stage, init_dir)
  if key not in _EXPERIMENTS:
    config = make_config(recipe, method, overrides, stage=stage)
    if init_dir is not None:
      config.init_checkpoint = init_dir
    exp = build_experiment(config, splits)
    state = jax.device_get(exp.state)
    state = state.replace(params=_to_x64(state.params), batch_stats=_to_x64(state.batch_stats),
                          opt_state=_to_x64(state.opt_state))
    batch_fn = jax.jit(exp.pipeline.gather)
    _EXPERIMENTS[key] = (config, exp, state, batch_fn, splits)
  return _EXPERIMENTS[key][:4]


NO_BUGS = tr.Bugs()


def build(recipe, method, overrides, splits, *, stage=None, bugs=NO_BUGS, init_dir=None):
  """The CLI's experiment for `recipe` + `method` + `overrides` on `splits` (float64 state) and
  a replica of the official step for it, with `bugs` planted."""
  config, exp, state, batch_fn = _experiment(recipe, method, overrides, splits, stage, init_dir)
  arch = "resnet34" if config.model == "resnet34" else "resnet32"
  head_prefix = "fc" if arch == "resnet34" else "linear"
  kw = dict(config.model_kwargs)
  num_classes = splits.num_classes
  if arch == "resnet34":
    model = tr.ResNetLOS(num_classes, stage_sizes=tuple(kw["stage_sizes"]),
                         widths=tuple(kw["widths"]), bugs=bugs)
  else:
    model = tr.ResNetS(num_classes, blocks=kw["blocks_per_stage"], widths=tuple(kw["widths"]),
                       cosine=exp.method.head == "cosine", bugs=bugs)
  loop = ("gala" if method in ("gala", "gala_prs")
          else "stage2" if exp.method.stage == "stage2" else "ldam")
  replica = tr.StepReplica(
      model, loop=loop, loss=REPLICA_LOSS[method], counts=splits.class_counts, hp=exp.hp,
      lr_fn=lr_fn_for(config, exp.steps_per_epoch, bugs), momentum=config.momentum,
      weight_decay=config.weight_decay, nesterov=config.nesterov,
      steps_per_epoch=exp.steps_per_epoch, head_name=head_prefix, bugs=bugs,
      batch_size=config.batch_size)
  return Run(exp=exp, config=config, arch=arch, head_prefix=head_prefix, replica=replica,
             state=state, batch_fn=batch_fn)


def step_batch(run: Run, state, order):
  """The batch and loss key ltjax's step draws at `state.step` (the on-device pipeline's key
  scheme and row, `ltjax.data.step_keys` / `step_indices`; the gather/augmentation of
  `experiments.experiment`)."""
  exp = run.exp
  step = int(jax.device_get(state.step))
  aug_key, loss_key = ltjax.data.step_keys(state.rng, step)
  last = exp.last_batch_size and step % exp.steps_per_epoch == exp.steps_per_epoch - 1
  indices = ltjax.data.step_indices(order, step, steps_per_epoch=exp.steps_per_epoch,
                                    size=exp.last_batch_size if last else None)
  batch = run.batch_fn(aug_key, exp.device_data["train_images"],
                       exp.device_data["train_labels"], indices)
  return jax.device_get(batch), loss_key


def teacher_forced(run: Run, num_steps: int) -> Trace:
  exp, replica = run.exp, run.replica
  d = exp.device_data
  state = ltjax.train.put_replicated(run.state, exp.mesh)  # the step donates its input
  errors = {"loss": 0.0, "params": 0.0, "bn_stats": 0.0, "momentum": 0.0, "loss_state": 0.0,
            "lr": 0.0}
  losses, lrs = [], []
  order = None
  for t in range(num_steps):
    epoch = t // exp.steps_per_epoch
    if t % exp.steps_per_epoch == 0:
      order = exp.epoch_order(state.rng, jnp.int32(epoch), d["train_labels"],
                              d["stats"].class_counts)
    batch, loss_key = step_batch(run, state, order)
    sd0, mom0 = torch_view(state, arch=run.arch, head_prefix=run.head_prefix)
    extra = {}
    if exp.method.loss is ltjax.train.METHODS["eql"].loss:
      extra["eql_mask"] = np.asarray(jax.device_get(_eql.bernoulli_mask(
          loss_key, (batch["label"].shape[0], exp.splits.num_classes), exp.hp["eql_gamma"])))
    if run.replica.loop == "gala":
      extra["gala"] = gala_to_official(state.loss_state)
    # The epoch's remainder step (keep_last_batch) is its own compiled step.
    new_state, metrics = exp.step_at(t % exp.steps_per_epoch)(
        state, exp.device_batch(order), d["stats"])
    replica.load(sd0, mom0)
    x = np.transpose(np.asarray(batch["image"], np.float64), (0, 3, 1, 2))
    loss = replica.step(x, batch["label"], t, extra)
    sd1, mom1 = replica.export()
    lt_sd, lt_mom = torch_view(new_state, arch=run.arch, head_prefix=run.head_prefix)
    metrics = jax.device_get(metrics)
    losses.append((float(metrics["loss"]), loss))
    lrs.append(float(metrics["lr"]))
    errors["lr"] = max(errors["lr"], rel_err(metrics["lr"], replica.lr_fn(epoch)))
    errors["loss"] = max(errors["loss"], rel_err(metrics["loss"], loss))
    for key, value in sd1.items():
      if key.endswith("num_batches_tracked"):
        continue
      kind = "bn_stats" if "running" in key else "params"
      if kind == "params":
        # The update is what a step computes; it is read as a difference of weights, whose
        # float64 rounding (~1e-16 of the weights) is floored out at 1e-6 of the weights' norm.
        delta = value - sd0[key]
        floor = 1e-6 * np.linalg.norm(sd0[key])
        diff = np.linalg.norm((lt_sd[key] - sd0[key]) - delta)
        err = 0.0 if diff == 0 else diff / max(np.linalg.norm(delta), floor, 1e-300)
      else:
        err = rel_err(lt_sd[key], value)
      errors[kind] = max(errors[kind], err)
    for key, value in mom1.items():
      errors["momentum"] = max(errors["momentum"], rel_err(lt_mom[key], value))
    if run.replica.loop == "gala":
      official = gala_from_official(*extra["gala"])
      lt_state = jax.device_get(new_state.loss_state)._asdict()
      for key, value in official.items():
        errors["loss_state"] = max(errors["loss_state"], rel_err(lt_state[key], value))
    state = new_state
  return Trace(steps=num_steps, errors=errors, losses=losses, lrs=lrs)


def check(trace: Trace):
  """Asserts the teacher-forced criterion; returns the errors."""
  bad = {k: v for k, v in trace.errors.items()
         if v > (GALA_STATE_RTOL if k == "loss_state" else RTOL)}
  assert not bad, f"parity broken over {trace.steps} steps: {bad} (all: {trace.errors})"
  return trace.errors


def stage1_dir(splits, tmpdir):
  """A ResNet-34 stage-1 checkpoint (the los_r34 recipe's CE model at step 0)."""
  config = make_config("los_r34", "ce", {"model_kwargs": R34_KWARGS, "batch_size": 16})
  return save_stage1(config, splits, tmpdir)


def replica_eval_logits(run: Run, kind: str, tau: float = 1.0):
  """The replica's evaluation logits of the test images, with ltjax's state loaded: "plain",
  "flip" (LOS), "tau_norm" or "adjust" (post-hoc LA)."""
  sd, mom = torch_view(ltjax.train.put_replicated(run.state, run.exp.mesh), arch=run.arch,
                       head_prefix=run.head_prefix)
  run.replica.load(sd, mom)
  x = tr.normalize(run.exp.splits.test_images, run.exp.splits.mean, run.exp.splits.std)
  model = run.replica.model
  if kind == "flip":
    return tr.flip_tta_logits(model, x)
  if kind == "tau_norm":
    return tr.tau_norm_logits(model, x, run.head_prefix, tau)
  logits = tr.eval_logits(model, x)
  if kind == "adjust":
    return tr.posthoc_la_logits(logits, run.exp.splits.class_counts, tau)
  return logits


def ltjax_eval_logits(run: Run, tau: float = 1.0):
  """ltjax's test logits as the CLI's `evaluate` computes them (post-hoc step included)."""
  state = ltjax.train.put_replicated(run.state, run.exp.mesh)
  return np.asarray(jax.device_get(ltrain.split_logits(run.exp, state)("test", tau)))


def _flat_params(sd):
  return np.concatenate([np.ravel(v) for k, v in sorted(sd.items())
                         if "running" not in k and "num_batches" not in k])


def free_running(run: Run, num_steps: int, *, control_replica: tr.StepReplica):
  """Free-running trajectories from the same step-0 state and the same batches: ltjax's CLI
  step, the replica, and the control (a second replica fed the batches rounded to float32, one
  float32 rounding of the inputs). Returns per-step relative parameter distances
  `(ltjax vs replica, replica vs control)` and the three losses."""
  exp, d = run.exp, run.exp.device_data
  state = ltjax.train.put_replicated(run.state, exp.mesh)
  sd0, mom0 = torch_view(state, arch=run.arch, head_prefix=run.head_prefix)
  run.replica.load(sd0, mom0)
  control_replica.load(sd0, mom0)
  gala = gala_to_official(state.loss_state) if run.replica.loop == "gala" else None
  gala_c = gala
  rows = []
  order = None
  for t in range(num_steps):
    if t % exp.steps_per_epoch == 0:
      order = exp.epoch_order(state.rng, jnp.int32(t // exp.steps_per_epoch), d["train_labels"],
                              d["stats"].class_counts)
    batch, _ = step_batch(run, state, order)
    state, metrics = exp.train_step(state, exp.device_batch(order), d["stats"])
    x = np.transpose(np.asarray(batch["image"], np.float64), (0, 3, 1, 2))
    extra = {"gala": gala} if gala is not None else {}
    extra_c = {"gala": gala_c} if gala is not None else {}
    loss = run.replica.step(x, batch["label"], t, extra)
    loss_c = control_replica.step(x.astype(np.float32).astype(np.float64), batch["label"], t,
                                  extra_c)
    if gala is not None:
      gala, gala_c = extra["gala"], extra_c["gala"]
    lt_sd, _ = torch_view(state, arch=run.arch, head_prefix=run.head_prefix)
    rep, ctl = run.replica.export()[0], control_replica.export()[0]
    rows.append({"step": t + 1, "ltjax_vs_replica": rel_err(_flat_params(lt_sd), _flat_params(rep)),
                 "control": rel_err(_flat_params(ctl), _flat_params(rep)),
                 "loss_ltjax": float(jax.device_get(metrics["loss"])), "loss_replica": loss,
                 "loss_control": loss_c})
  return rows
