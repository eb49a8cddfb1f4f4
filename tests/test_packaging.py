"""`pip install ltjax` is the slim core: the numerics and the testing kit import and run with
none of the training or data extras (Flax, Orbax, TFDS, grain, ...) installed."""
import os
import pathlib
import subprocess
import sys
import textwrap
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORE = ("ltjax", "ltjax.priors", "ltjax.losses", "ltjax.posthoc", "ltjax.metrics",
        "ltjax.testing")
# What the extras bring and the core must not import.
HEAVY = ("flax", "orbax", "tensorflow_datasets", "tensorflow", "grain", "ml_collections",
         "matplotlib", "tensorboardX", "PIL", "tqdm", "hypothesis", "torch")
# Run after importing the core: a loss, a post-hoc step, a metric and a kit check work.
SMOKE = textwrap.dedent("""
    import sys
    import jax.numpy as jnp
    import ltjax
    from ltjax import losses, metrics, posthoc, priors, testing
    counts = jnp.array([100.0, 10.0, 1.0])
    log_pi = priors.log_prior(counts)
    logits = jnp.array([[1.0, 0.5, -1.0], [0.0, 2.0, 1.0]])
    labels = jnp.array([0, 2])
    loss = losses.logit_adjusted_loss(logits, labels, log_prior=log_pi, tau=1.0)
    assert loss.shape == (2,) and bool(jnp.all(jnp.isfinite(loss)))
    predictions = jnp.argmax(posthoc.adjust_logits(logits, log_prior=log_pi), -1)
    confusion = metrics.confusion_matrix(labels, predictions, num_classes=3)
    assert 0.0 <= float(metrics.balanced_accuracy(confusion)) <= 1.0
    la = lambda z, y, *, class_counts: losses.logit_adjusted_loss(
        z, y, log_prior=priors.log_prior(class_counts))
    testing.check_shift_invariance(la)
    heavy = sorted(m for m in {heavy!r} if sys.modules.get(m) is not None)
    assert not heavy, f"the core imported {{heavy}}"
    print("core ok", ltjax.__version__)
""")


def _requirement_name(spec):
  return spec.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip()


def test_core_dependencies_are_jax_optax_numpy_and_the_extras_hold_the_rest():
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  assert {_requirement_name(d).lower() for d in project["dependencies"]} == {
      "jax", "optax", "numpy"}
  extras = {name: {_requirement_name(d).lower() for d in deps}
            for name, deps in project["optional-dependencies"].items()}
  assert {"flax", "orbax-checkpoint", "ml-collections", "tqdm", "matplotlib",
          "tensorboardx"} <= extras["train"]
  assert {"tensorflow-datasets", "grain", "pillow"} <= extras["data"]
  # The README's `pip install -e ".[test]"` still brings everything the suite imports.
  assert "ltjax" in extras["test"] and any("all" in d for d in
                                             project["optional-dependencies"]["test"])
  assert {"train", "data", "testing"} <= set(
      project["optional-dependencies"]["all"][0].split("[")[1].rstrip("]").split(","))


def test_core_imports_and_runs_with_the_extras_absent():
  """The extras' packages made unimportable (`sys.modules[name] = None`) in a fresh process."""
  block = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in HEAVY)
  code = block + "".join(f"import {m}\n" for m in CORE) + SMOKE.format(heavy=HEAVY)
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  assert "core ok" in result.stdout


def test_heavy_subpackages_load_on_first_access_only():
  code = ("import sys, ltjax\n"
          "assert 'ltjax.train' not in sys.modules and 'ltjax.data' not in sys.modules\n"
          "assert 'flax' not in sys.modules\n"
          "ltjax.models\n"
          "assert 'ltjax.models' in sys.modules and 'flax' in sys.modules\n"
          "print(sorted(n for n in dir(ltjax) if not n.startswith('_')))\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  for name in ("priors", "losses", "posthoc", "metrics", "testing", "data", "models", "train",
               "checkpointing"):
    assert repr(name) in result.stdout


def _site_packages_mib(venv):
  site = next(venv.glob("lib/python*/site-packages"))
  return sum(f.stat().st_size for f in site.rglob("*") if f.is_file()) / 2**20


@pytest.mark.integration
def test_wheel_installs_the_core_alone_into_a_fresh_venv(tmp_path):
  """Builds the wheel, installs it (core dependencies only, from pip's cache where it can) into
  a fresh venv outside the checkout, and runs the core there."""
  wheels = tmp_path / "wheels"
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w",
                  str(wheels), str(ROOT)], check=True, timeout=600)
  (wheel,) = wheels.glob("ltjax-*.whl")
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
  python = venv / "bin" / "python"
  subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                  str(wheel)], check=True, timeout=900)
  code = ("import importlib.util\n"
          f"absent = [m for m in {HEAVY!r} if importlib.util.find_spec(m) is not None]\n"
          "assert not absent, f'installed with the core: {absent}'\n"
          + "".join(f"import {m}\n" for m in CORE) + SMOKE.format(heavy=HEAVY))
  # From another directory, so the checkout's ltjax cannot shadow the installed one.
  result = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, check=False,
                          env={"PATH": os.environ.get("PATH", ""), "JAX_PLATFORMS": "cpu",
                               "HOME": os.environ.get("HOME", str(tmp_path))})
  assert result.returncode == 0, result.stderr[-3000:]
  assert "core ok" in result.stdout
  location = subprocess.run([str(python), "-c", "import ltjax; print(ltjax.__file__)"],
                            cwd=tmp_path, capture_output=True, text=True, check=True)
  assert str(venv) in location.stdout
  print(f"core install: {_site_packages_mib(venv):.0f} MiB of site-packages")
