"""Step-time overhead of GALA over plain cross-entropy in a jitted SGD train step.

Each step runs forward, per-example loss, batch mean, gradient, an optax SGD-momentum update and
(for GALA) `ltjax.losses.gala_update`. The network is a ResNet-32-sized MLP stand-in,
3072 -> 512 -> 64 -> C with ReLU (1.61M + 65 C parameters; CIFAR ResNet-32 has 0.46M parameters
but ~70 MFLOPs per image, so this MLP is ~40x cheaper per example and the *relative* overhead
measured here is an upper bound for a real ResNet-32 step). These are timed:

  * `ce`: optax softmax cross-entropy (and `ce_again`, the same step timed twice: an A/A control
    whose difference from `ce` shows the noise floor of the measurement);
  * `gala`: ltjax's GALA (O(C) state: the diagonals / off-diagonal column sums of F and P);
  * `gala_full`: the official code's literal [C, C] F and P (`F += |g|^T onehot(y)`, `P += F`),
    written here only to measure what the O(C) state saves.

Variants are interleaved step by step in a random order per round (the CPU is shared: load
spikes hit all of them alike; `experiments/bench/_harness.py`), and each figure is the median over
all rounds of per-step wall (and process CPU) times after a warm-up, with the median of the
per-round paired ratios to CE next to the ratio of medians.

  python -m experiments.bench.gala [--num_classes=100,1000] [--batch_size=64] [--rounds=300]
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from absl import app
from absl import flags

from experiments.bench import _harness
from ltjax import losses

_NUM_CLASSES = flags.DEFINE_list("num_classes", ["100", "1000"], "Class counts to benchmark.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Batch size (GALA's CIFAR config: 64).")
_ROUNDS = flags.DEFINE_integer("rounds", 300, "Interleaved rounds per class count.")
_STEPS = flags.DEFINE_integer("steps", 1, "Timed steps per variant per round.")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed rounds (the first compiles).")
_OUT = flags.DEFINE_string("out", "experiments/results/bench_gala", "Output path without suffix.")

WIDTHS = (3072, 512, 64)
# "ce_again" is plain CE compiled and timed a second time: its "overhead" is the noise floor.
VARIANTS = ("ce", "ce_again", "gala", "gala_full")


def init_mlp(key, num_classes):
  sizes = WIDTHS + (num_classes,)
  keys = jax.random.split(key, len(sizes) - 1)
  return [{"w": jax.random.normal(k, (m, n)) / np.sqrt(m), "b": jnp.zeros((n,))}
          for k, m, n in zip(keys, sizes[:-1], sizes[1:])]


def mlp(params, x):
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def full_matrix_view(full) -> losses.GalaState:
  """The official [C, C] (F, P) seen through GALA's reads: theta = diag(P), phi = off-diagonal
  column sums."""
  theta = jnp.diagonal(full[1])
  zeros = jnp.zeros_like(theta)
  return losses.GalaState(grad_pos=zeros, grad_neg=zeros, theta=theta,
                          phi=jnp.sum(full[1], axis=0) - theta)


def full_matrix_update(full, logits, labels):
  """`F[:, y_i] += |g_i|` for every example, then `P += F` (docs/methods.md §2.10), O(B C^2)."""
  adjusted = losses.gala_adjusted_logits(logits, labels, full_matrix_view(full))
  onehot = jax.nn.one_hot(labels, adjusted.shape[-1])
  abs_grad = jnp.abs(jax.nn.softmax(adjusted) - onehot) / adjusted.shape[0]
  f = full[0] + abs_grad.T @ onehot
  return f, full[1] + f


def make_step(variant, optimizer):
  def per_example_loss(logits, labels, loss_state):
    if variant in ("ce", "ce_again"):
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if variant == "gala":
      return losses.gala_loss(logits, labels, loss_state)
    return losses.gala_loss(logits, labels, full_matrix_view(loss_state))

  def step(params, opt_state, loss_state, x, y):
    def mean_loss(params):
      logits = mlp(params, x)
      return jnp.mean(per_example_loss(logits, y, loss_state)), logits

    grads, logits = jax.grad(mean_loss, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    logits = jax.lax.stop_gradient(logits)
    if variant == "gala":
      loss_state = losses.gala_update(loss_state, logits, y)
    elif variant == "gala_full":
      loss_state = full_matrix_update(loss_state, logits, y)
    return optax.apply_updates(params, updates), opt_state, loss_state

  return jax.jit(step, donate_argnums=(0, 1, 2))


def initial_loss_state(variant, num_classes):
  if variant == "gala":
    return losses.gala_init(num_classes)
  if variant == "gala_full":
    return tuple(jnp.zeros((num_classes, num_classes)) for _ in range(2))
  return ()


def bench_classes(num_classes, batch_size, rounds, steps, warmup):
  """The harness's summary of every variant's step at `num_classes` (paired ratios to CE)."""
  key_params, key_x = jax.random.split(jax.random.key(0))
  x = jax.random.normal(key_x, (batch_size, WIDTHS[0]))
  y = jnp.asarray(np.random.default_rng(0).integers(0, num_classes, batch_size), jnp.int32)
  optimizer = optax.sgd(0.01, momentum=0.9)
  carries, steps_fns = {}, {}
  for variant in VARIANTS:
    params = init_mlp(key_params, num_classes)
    carries[variant] = (params, optimizer.init(params), initial_loss_state(variant, num_classes))
    steps_fns[variant] = make_step(variant, optimizer)

  def run_step(variant):
    # The step donates its carry: keep the new one for the next call.
    carries[variant] = steps_fns[variant](*carries[variant], x, y)
    return carries[variant]

  with tqdm.tqdm(total=rounds, desc=f"C={num_classes}", leave=False) as progress:
    timings = _harness.interleaved(
        {v: functools.partial(run_step, v) for v in VARIANTS}, rounds=rounds, warmup=warmup,
        samples_per_round=steps, baseline="ce", seed=1, on_round=progress.update)
  return {
      "num_classes": num_classes,
      "num_params": sum(int(a.size) for a in jax.tree.leaves(init_mlp(key_params, num_classes))),
      "timed_steps_per_variant": rounds * steps,
      "variants": _harness.summary(timings),
  }


VARIANT_NAMES = {"ce": "CE", "ce_again": "CE again (A/A control)",
                 "gala": "GALA, ltjax O(C) state", "gala_full": "GALA, full [C,C] F/P"}


def markdown(result) -> str:
  lines = ["# Step-time overhead of GALA over cross-entropy", "",
           *_harness.provenance_lines(result), "",
           ("| classes | step | median ms/step | vs CE (medians) | vs CE (paired per round) | "
           "p10 ms/step | CPU ms/step | target |"), "|---|---|---|---|---|---|---|---|"]
  for r in result["results"]:
    for v in VARIANTS:
      s = r["variants"][v]
      target = "" if v != "gala" else ("<= 5%" if r["num_classes"] <= 100 else "<= 15%")
      lines.append(f"| {r['num_classes']} | {VARIANT_NAMES[v]} | {1e3 * s['wall_median_s']:.2f} | "
                   f"{100 * (s['ratio_of_medians'] - 1):+.1f}% | "
                   f"{100 * (s['paired_ratio_median'] - 1):+.1f}% | "
                   f"{1e3 * s['wall_p10_s']:.2f} | {1e3 * s['cpu_median_s']:.2f} | {target} |")
  cfg = result["config"]
  lines += ["", (f"Median wall time per jitted train step (forward, loss, grad, optax SGD-momentum "
            f"update, GALA update) over {cfg['rounds']} interleaved rounds x {cfg['steps']} steps "
            f"after {cfg['warmup']} warm-up rounds (p10: 10th percentile, less sensitive to other "
            f"processes on the shared CPU; CPU: this process's CPU time, all threads); MLP "
            f"{' -> '.join(map(str, WIDTHS))} -> C, batch {cfg['batch_size']}, float32."), "",
            ("Full [C,C] F/P = the official code's matrices, timed for comparison only. The A/A "
            "row is the CE step timed a second time: its difference from CE is the noise floor."),
            ""]
  return "\n".join(lines)


def main(argv):
  del argv
  result = _harness.start_record("experiments.bench.gala")
  result["config"] = {"batch_size": _BATCH_SIZE.value, "rounds": _ROUNDS.value,
                      "steps": _STEPS.value, "warmup": _WARMUP.value, "widths": WIDTHS}
  result["results"] = [bench_classes(int(c), _BATCH_SIZE.value, _ROUNDS.value, _STEPS.value,
                                     _WARMUP.value) for c in _NUM_CLASSES.value]
  _harness.write(_OUT.value, _harness.finish_record(result), markdown(result))


if __name__ == "__main__":
  app.run(main)
