"""The entry points' JAX set-up (experiments.runtime) and the benchmark's PyTorch reference."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import runtime
from ltjax import models

_PROBE = ("from experiments import runtime; runtime.configure_jax(batch_size={batch}); "
          "import jax, json; print(json.dumps([jax.device_count(), "
          "jax.config.jax_compilation_cache_dir]))")


def _configured(batch, *, first: str = "", **env):
  """(device count, cache dir) after `configure_jax(batch_size=batch)` in a fresh process that
  first runs the statement `first`."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS", runtime.CPU_DEVICES_ENV)} | env
  probe = f"{first}; {_PROBE.format(batch=batch)}" if first else _PROBE.format(batch=batch)
  out = subprocess.run([sys.executable, "-c", probe], env=env, check=True,
                       capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def test_cpu_device_count_divides_the_batch_and_reads_the_environment(monkeypatch):
  monkeypatch.delenv(runtime.CPU_DEVICES_ENV, raising=False)
  assert runtime.cpu_device_count() == runtime.DEFAULT_CPU_DEVICES == 1
  assert runtime.cpu_device_count(128) == 1
  monkeypatch.setenv(runtime.CPU_DEVICES_ENV, "8")
  assert runtime.cpu_device_count(128) == 8
  assert runtime.cpu_device_count(36) == 6
  assert runtime.cpu_device_count(7) == 7
  assert runtime.cpu_device_count(1) == 1
  monkeypatch.setenv(runtime.CPU_DEVICES_ENV, "0")
  with pytest.raises(ValueError):
    runtime.cpu_device_count()


def test_configure_jax_sets_the_cache_and_the_cpu_split(tmp_path):
  cache = str(tmp_path / "cache")
  assert _configured(36, LTJAX_COMPILATION_CACHE=cache) == [1, cache]
  assert _configured(36, LTJAX_COMPILATION_CACHE=cache, LTJAX_CPU_DEVICES="8") == [6, cache]
  # The user's own device count wins.
  assert _configured(36, LTJAX_COMPILATION_CACHE=cache, LTJAX_CPU_DEVICES="8",
                     JAX_NUM_CPU_DEVICES="3") == [3, cache]


def test_importing_the_cli_creates_no_device(tmp_path):
  """The CLI imports jax, ltjax and the experiment modules at module level; none of them may
  initialise a backend, or `configure_jax` in `main` could no longer split the CPU."""
  cache = str(tmp_path / "cache")
  assert _configured(36, first="import experiments.main", LTJAX_COMPILATION_CACHE=cache,
                     LTJAX_CPU_DEVICES="8") == [6, cache]


def test_torch_reference_is_the_same_resnet32():
  """The benchmark's PyTorch network has ltjax's parameter count and conv shapes, layer by layer,
  and its step and augmented loader run."""
  torch = pytest.importorskip("torch")
  from experiments.bench import torch_reference  # noqa: PLC0415 (imports torch: after the importorskip)

  step = torch_reference.TrainStep(num_classes=10)
  torch_convs = [tuple(p.shape) for n, p in step.model.named_parameters() if p.ndim == 4]
  variables = jax.eval_shape(lambda: models.build_classifier("resnet32", num_classes=10).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))
  flax_convs = [x.shape for x in jax.tree.leaves(variables["params"]) if x.ndim == 4]
  # OIHW against HWIO, in module order (Flax's tree is ordered by name; compare as multisets).
  assert sorted((o, i, h, w) for h, w, i, o in flax_convs) == sorted(torch_convs)
  assert sum(p.numel() for p in step.model.parameters()) == 464_154

  images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  loader = torch_reference.data_loader(images, np.arange(8) % 10, batch_size=4, mean=(0.5,) * 3,
                                       std=(0.25,) * 3, num_workers=0)
  x, y = next(iter(loader))
  assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (4,)
  assert np.isfinite(float(step(x, y)))
