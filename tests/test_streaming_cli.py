"""The streamed large-dataset path end to end: generated 1000-class long-tailed JPEG lists ->
the `lt_lists` builder -> the real CLI (`experiments.main`) with the ImageNet-LT ResNeXt-50
recipe at 64x64, and SIGTERM pre-emption + resume equal to an uninterrupted run."""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from ltjax import checkpointing
from ltjax import data
from tests.test_data_lists import write_jpeg_list

pytestmark = pytest.mark.slow
_ROOT = pathlib.Path(__file__).resolve().parents[1]
C = 1000


# Evaluation images in the generated lists: few, so that the report (the whole val and test splits
# through ResNeXt-50) costs seconds, not the minutes 1,000 images per split took on 2 CPU cores.
EVAL_IMAGES = {"val": 8, "test": 16}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """A 1000-class ImageNet-LT look-alike: train 4 .. 1 per class (1,709 JPEGs), and small
  val / test lists (`EVAL_IMAGES`) whose classes span the head, body and tail."""
  root = tmp_path_factory.mktemp("imagenet_lt")
  rng = np.random.default_rng(0)
  classes = {"train": np.repeat(np.arange(C),
                                np.maximum(1, (4 * 0.25 ** (np.arange(C) / (C - 1))).astype(int))),
             **{split: np.linspace(0, C - 1, n).astype(int) for split, n in EVAL_IMAGES.items()}}
  for split, labels in classes.items():
    entries = [(f"{'val' if split == 'test' else 'train'}/n{c:04d}/{split}_{i}.JPEG", c)
               for i, c in enumerate(labels)]
    write_jpeg_list(root, f"ImageNet_LT_{split}.txt", entries, rng, sizes=(64, 90))
  data_dir = root.parent / f"{root.name}-tfds"
  data.prepare_lt_lists("imagenet_lt", image_root=root, data_dir=data_dir, verify=False)
  return root, data_dir


def _args(prepared, workdir, *extra):
  root, data_dir = prepared
  return [sys.executable, "-m", "experiments.main",
          "--config=experiments/configs/imagenet_lt_rx50.py", f"--workdir={workdir}",
          f"--config.image_root={root}", f"--config.data_dir={data_dir}",
          "--config.verify_lists=false", "--config.image_size=64", "--config.batch_size=16",
          "--config.eval_batch_size=8", "--config.num_epochs=1", *extra]


def _env(**extra):
  # The CLI's persistent compilation cache is the tests' own (conftest): a second run of the suite
  # loads ResNeXt-50's compiled init, train and eval programs instead of compiling them (~2 min).
  return dict(os.environ, PYTHONPATH=str(_ROOT), JAX_PLATFORMS="cpu",
              LTJAX_COMPILATION_CACHE=jax.config.jax_compilation_cache_dir, **extra)


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


# The recipe's own network (the test) is `long`: measured on 2 shared cores (load 8 - 18),
# both runs concurrently, 6.1 min with a cold compilation cache and 3.0 - 5.2 min warm (a ResNeXt-50
# step of 16 images at 64x64 takes ~50 s there). ResNet-32 at 32x32 keeps the same two CLI runs in
# the default suite (47 s warm).
# Why ResNeXt-50 / ResNet-50 at 64x64 miss the tolerance (measured 2026-12-02, not a layout or
# data bug): the global batches are identical (`train_image_batches` of processes 0 and 1 of 2,
# concatenated, equal the 1-process batches bit for bit, colour jitter included), and one
# `value_and_grad` of an `ImageNetResNet` (stages 1,1,1,1, planes 8..64) on a fixed 64x64 batch of
# 16 agrees between 1 x 8 and 2 x 4 to 2e-6 (conv1 gradient, scale 1.75). For full ResNet-50 at
# 64x64 the same single gradient differs at conv1 by 4.6 (scale 259) between 1 x 8 and 2 x 4, and
# by 3.4 between 1 x 8 and 1 x 4 devices in ONE process (loss 4.0e-5 / 3.8e-5 apart, of 7.39):
# at initialisation the deep network amplifies float32 summation-order noise (~1e-7) to ~1e-2 of
# the conv1 gradient, so any change of the device layout moves the 2-step parameters a lot.
# Through the CLI (resnext50, 2 steps) a 1 x 4 run in one process ends 0.033 from the 1 x 8
# run at the conv1 kernel (2 x 4: 0.03) and its mean loss 1.6e-3 relative from it (22.597 vs
# 22.561; 2 x 4: 5e-5), with no second process involved.
# The elementwise tolerance below suits ResNet-32 only; a test of the ResNeXt-50 case needs a
# bound set by a layout control such as that 1 x 4 run (one measurement so far).
_RX50_MISMATCH = pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "float32 rounding amplified by ResNeXt-50 / ResNet-50 at 64x64: after 2 steps the 2 x 4 "
    "run's parameters differ from the 1 x 8 run's by up to 0.03 (conv1 kernel; the 2-step update "
    "is ~0.06) and the mean loss by 5e-5 relative; 1 x 4 vs 1 x 8 devices in one process moves "
    "the parameters as much (see the comment above)."))


@pytest.mark.parametrize("model, size", [
    pytest.param("resnet32", 32, id="resnet32"),
    pytest.param("resnext50_32x4d", 64, id="resnext50", marks=[pytest.mark.long, _RX50_MISMATCH]),
])
def test_cli_trains_two_steps_of_imagenet_lt_rx50_on_1x8_and_2x4_devices(prepared, tmp_path,
                                                                        model, size):
  """The real CLI with the `imagenet_lt_rx50` recipe (its ResNeXt-50 32x4d with the 1000-way head
  at 64x64, or ResNet-32 at 32x32), 2 steps: one process with 8 CPU devices and, at the same
  time, two processes with 4 each (disjoint shards of every global batch); the two runs must end
  with the same parameters."""
  two_steps = ("--config.max_steps_per_epoch=2", f"--config.model={model}",
               f"--config.image_size={size}")
  runs = {"single": (_args(prepared, tmp_path / "single", *two_steps), "8")}
  port = _free_port()
  for i in range(2):
    runs[f"multi{i}"] = (_args(prepared, tmp_path / "multi", *two_steps, "--distributed",
                               f"--coordinator_address=localhost:{port}", "--num_processes=2",
                               f"--process_id={i}"), "4")
  # Output to files, not pipes: a full pipe would stall one run while the test waits on another.
  procs = {}
  for name, (args, devices) in runs.items():
    with open(tmp_path / f"{name}.log", "w") as log:
      procs[name] = subprocess.Popen(args, cwd=_ROOT, env=_env(JAX_NUM_CPU_DEVICES=devices),
                                     stdout=log, stderr=subprocess.STDOUT, text=True)
  outputs = {}
  for name, p in procs.items():
    p.wait(timeout=900)
    outputs[name] = (tmp_path / f"{name}.log").read_text()
    if p.returncode != 0:  # pytest.fail, not assert: a crash is not the expected failure
      pytest.fail(f"{name} exited {p.returncode}:\n{outputs[name][-3000:]}")
  results = json.loads((tmp_path / "single" / "results.json").read_text())
  train_list = data.read_list(prepared[0] / "ImageNet_LT_train.txt")
  assert results["split_fingerprint"] == train_list.fingerprint
  assert results["config"]["model"] == model and results["config"]["image_size"] == size
  assert "8 x cpu" in results["device"] and "1 process(es)" in results["device"]
  assert len(results["test"]["per_class"]) == C and results["history"][0]["loss"] > 0
  assert "step 2\n" in outputs["single"] and "step 3\n" not in outputs["single"]
  multi_results = json.loads((tmp_path / "multi" / "results.json").read_text())
  assert "8 x cpu" in multi_results["device"] and "2 process(es)" in multi_results["device"]
  assert "step 2\n" in outputs["multi0"] and "step 3\n" not in outputs["multi0"]
  # Same global batches (shards and augmentation): the same loss to float32 reduction noise; a
  # single differing crop would move it by ~1e-3.
  np.testing.assert_allclose(multi_results["history"][0]["loss"], results["history"][0]["loss"],
                             rtol=1e-5)
  a, _ = _final_params(tmp_path / "single")
  b, _ = _final_params(tmp_path / "multi")
  # ResNet-32 after 2 warm-up steps (lr 1.25e-3): the cross-process all-reduce's summation order
  # moved parameters by up to 7e-6 (measured), different data would by the size of the update.
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=5e-5), a, b)


def _final_params(workdir):
  with checkpointing.Checkpointer(workdir / "checkpoints") as ckpt:
    tree, meta = ckpt.restore_tree()
  return tree["params"], meta


def test_sigterm_checkpoints_exits_zero_and_resume_equals_an_uninterrupted_run(prepared,
                                                                                 tmp_path):
  # Enough steps that the signal lands mid-epoch (a cached compile makes each step fast).
  small = ["--config.model=resnet32", "--config.max_steps_per_epoch=30",
           "--config.image_size=32"]
  full = subprocess.run(_args(prepared, tmp_path / "full", *small), cwd=_ROOT, env=_env(),
                        capture_output=True, text=True, timeout=900, check=False)
  assert full.returncode == 0, full.stderr[-3000:]
  proc = subprocess.Popen(_args(prepared, tmp_path / "cut", *small), cwd=_ROOT, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for line in proc.stdout:
    if line.startswith("step 2"):
      proc.send_signal(signal.SIGTERM)
      break
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  assert "Pre-empted at step" in out
  _, meta = _final_params(tmp_path / "cut")
  assert 2 <= meta["step_in_epoch"] < 30 and meta["epoch"] == 0
  assert not (tmp_path / "cut" / "results.json").exists()
  resumed = subprocess.run(_args(prepared, tmp_path / "cut", *small, "--resume"), cwd=_ROOT,
                           env=_env(), capture_output=True, text=True, timeout=900, check=False)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"step {meta['step_in_epoch'] + 1}\n" in resumed.stdout
  a, _ = _final_params(tmp_path / "full")
  b, _ = _final_params(tmp_path / "cut")
  flat = [np.concatenate([np.ravel(v) for v in jax.tree.leaves(t)]) for t in (a, b)]
  np.testing.assert_array_equal(flat[0], flat[1])
