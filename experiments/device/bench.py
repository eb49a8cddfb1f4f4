"""ltjax's ResNet-32 train step against PyTorch's on the accelerator (Table B's first figures).

The CPU benchmark's two steps (`experiments/bench/train_step.py`), on whatever accelerator JAX
and PyTorch see: ltjax's compiled step of the `ldam_r32` recipe with plain cross-entropy (batch
128, SGD momentum 0.9, weight decay 2e-4; its on-device gather + crop/flip + normalisation
inside the step), and `experiments/bench/torch_reference.py`'s ResNet-32 step (the same network,
loss and optimizer, NCHW float32, `cudnn.benchmark` on, its batch ready on the device). Both
are timed interleaved in one process (`experiments/bench/_harness.py`): `rounds` rounds of
`steps_per_round` steps each after `warmup` untimed rounds, every step synchronised (ltjax
blocks on its metrics, PyTorch on `torch.cuda.synchronize`). Reported: images/s (median step),
the speed ratio ltjax / PyTorch as a ratio of medians and paired per round, with the device
name, CUDA / cuDNN and library versions, and each framework's float32 convolution precision
(TF32 on Ampere and later for both by default: XLA's default precision, PyTorch's
`cudnn.allow_tf32`).
"""
from __future__ import annotations

import time


def _ltjax_step(config, batch_size: int):
  """A zero-argument callable running one blocking ltjax train step on a fixed random batch,
  and its compile seconds. (The one call into the CPU benchmark's step wrapper: re-point it here
  when the train step's interface changes.)"""
  from experiments.bench import train_step  # noqa: PLC0415

  run = train_step.LtjaxRun(config, train_step._random_splits(batch_size))  # pylint: disable=protected-access
  return run.step, run.compile_s


def run_bench(*, rounds: int = 20, steps_per_round: int = 10, warmup: int = 3) -> dict:
  """Runs the benchmark; returns its record (JSON-able)."""
  import jax  # noqa: PLC0415
  import torch  # noqa: PLC0415

  from experiments import provenance  # noqa: PLC0415
  from experiments.bench import _harness  # noqa: PLC0415
  from experiments.bench import torch_reference  # noqa: PLC0415
  from experiments.bench import train_step  # noqa: PLC0415

  started = time.perf_counter()
  config = train_step._recipe("ce")  # pylint: disable=protected-access
  batch = int(config.batch_size)
  cuda = torch.cuda.is_available()
  device = torch.device("cuda" if cuda else "cpu")
  torch.backends.cudnn.benchmark = True
  torch_step = torch_reference.TrainStep(num_classes=10)
  torch_step.model.to(device)  # in place: the optimizer keeps the same parameters
  gen = torch.Generator().manual_seed(0)
  x = torch.randn(batch, 3, 32, 32, generator=gen).to(device)
  y = torch.randint(0, 10, (batch,), generator=gen).to(device)

  def torch_run():
    loss = torch_step(x, y)
    if cuda:
      torch.cuda.synchronize()
    return loss

  ltjax_run, compile_s = _ltjax_step(config, batch)
  timings = _harness.interleaved({"ltjax": ltjax_run, "torch": torch_run}, rounds=rounds,
                                 warmup=warmup, samples_per_round=steps_per_round,
                                 baseline="torch")
  summary = train_step.summarize_steps(timings, batch_size=batch)
  versions = provenance.library_versions()
  versions["torch"] = torch.__version__
  record = {
      "date": provenance.utc_now(), "device": provenance.device_description(),
      "jax_devices": [str(d) for d in jax.devices()],
      "torch_device": torch.cuda.get_device_name(0) if cuda else "cpu",
      "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
      "versions": versions, "batch_size": batch, "rounds": rounds,
      "steps_per_round": steps_per_round, "warmup_rounds": warmup,
      "ltjax_compile_s": compile_s, "precision": {
          # None: XLA's default (TF32 convolutions and matmuls on Ampere and later).
          "jax_default_matmul_precision": str(
              getattr(jax.config, "jax_default_matmul_precision", None)),
          "torch_cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
          "torch_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32)},
      "ltjax": summary["ltjax"], "torch": summary["torch"],
      "speed_ratio": summary["ltjax"]["speed_vs_torch"],
      "speed_ratio_paired_median": summary["ltjax"]["speed_vs_torch_paired_median"],
      "speed_ratio_paired_range": summary["ltjax"]["speed_vs_torch_paired_range"],
      "step_seconds": {n: [[s.wall for s in r] for r in rs] for n, rs in timings.samples.items()},
      "wall_s": time.perf_counter() - started,
  }
  return record


def markdown_section(record: dict) -> str:
  """The benchmark as a markdown section."""
  lt, pt = record["ltjax"], record["torch"]
  lo, hi = record["speed_ratio_paired_range"]
  return "\n".join([
      f"## Train step: ltjax against PyTorch (ResNet-32, batch {record['batch_size']})", "",
      f"Device: {record['torch_device']} ({record['device']}); CUDA {record['cuda']}, cuDNN "
      f"{record['cudnn']}; " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()),
      "",
      "| framework | images/s | median step (ms) | min step (ms) | timed steps |",
      "|---|---|---|---|---|",
      (f"| ltjax (gather + crop/flip + normalise inside the step) | {lt['images_per_s']:.0f} | "
      f"{lt['step_ms_median']:.2f} | {lt['step_ms_min']:.2f} | {lt['timed_steps']} |"),
      (f"| PyTorch (batch ready on the device) | {pt['images_per_s']:.0f} | "
      f"{pt['step_ms_median']:.2f} | {pt['step_ms_min']:.2f} | {pt['timed_steps']} |"), "",
      (f"Speed ltjax / PyTorch: {record['speed_ratio']:.2f}x (medians); paired per round "
      f"{record['speed_ratio_paired_median']:.2f}x [{lo:.2f}, {hi:.2f}] over "
      f"{record['rounds']} interleaved rounds of {record['steps_per_round']} steps. "
      f"Precision: {record['precision']}."), ""])
