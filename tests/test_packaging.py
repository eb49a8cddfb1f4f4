"""`pip install ltjax` is the slim core: the numerics and the testing kit import and run with
none of the training or data extras (Flax, Orbax, TFDS, grain, ...) installed."""
import json
import os
import pathlib
import shutil
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


# The training CLI from an installed wheel (`ltjax-train`): the recipes ship in the package.
RECIPES = ("fmnist_cnn", "gala_r32", "ldam_r32", "los_r34", "imagenet_lt_r50", "imagenet_lt_rx50",
           "inat18_r50", "places_lt_r152")
# Fashion-MNIST prepared once for the tests (as tests/test_plugins.py), and its raw archives.
_TFDS_CACHE = pathlib.Path(os.environ.get("LTJAX_TEST_TFDS_DIR",
                                          "~/.cache/ltjax/tfds-tests")).expanduser()
_SHARED_DATA = ROOT.parent / "shared" / "data"
# A CNN small enough for a one-epoch run in well under a minute on 2 cores.
_TINY = ("--config.num_epochs=1", "--config.model_kwargs.widths=(4,)",
         "--config.model_kwargs.features=8", "--config.val_per_class=10", "--noprogress")


def test_a_packaged_recipe_name_resolves_to_its_file_before_absl_parses():
  from ltjax import recipes  # noqa: PLC0415 (the CLI modules need the train extra)
  from ltjax.cli import _config_flags  # noqa: PLC0415 (defines no flags)

  assert set(RECIPES) <= set(recipes.names())
  assert not {"common", "validation", "large_scale"} & set(recipes.names())
  fmnist = str(recipes.path("fmnist_cnn"))
  assert fmnist.endswith(os.path.join("ltjax", "recipes", "fmnist_cnn.py"))
  argv = ["ltjax-train", "--config=fmnist_cnn", "--config.method=la_loss", "--workdir=w"]
  assert _config_flags.resolve_recipe_argv(argv) == ["ltjax-train", f"--config={fmnist}",
                                        "--config.method=la_loss", "--workdir=w"]
  assert _config_flags.resolve_recipe_argv(["x", "--config", "los_r34:stage2"])[2] == (
      f"{recipes.path('los_r34')}:stage2")
  path = "experiments/configs/ldam_r32.py"
  assert _config_flags.resolve_recipe_argv(["x", f"--config={path}"]) == ["x", f"--config={path}"]


def test_an_unknown_recipe_name_is_one_line_listing_the_packaged_recipes(tmp_path):
  run = subprocess.run([sys.executable, "-m", "experiments.main", "--config=fmnist",
                        f"--workdir={tmp_path}/w"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, check=False)
  assert run.returncode == 1
  (line,) = run.stderr.strip().splitlines()
  assert line.startswith("--config=fmnist: no recipe file or packaged recipe named 'fmnist'")
  assert all(name in line for name in RECIPES)
  assert not (tmp_path / "w").exists()


def _venv_seeing_the_dependencies(tmp_path) -> pathlib.Path:
  """A fresh venv whose sys.path also holds this venv's installed packages except ltjax itself
  (symlinks in a folder named by a .pth file), so installing the wheel needs no network."""
  import sysconfig  # noqa: PLC0415

  deps = tmp_path / "deps"
  deps.mkdir()
  for entry in pathlib.Path(sysconfig.get_paths()["purelib"]).iterdir():
    name = entry.name
    if name.startswith(("ltjax", "__editable__", "_ltjax")) or name.endswith(".pth"):
      continue
    (deps / name).symlink_to(entry)
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
  site = next(venv.glob("lib/python*/site-packages"))
  (site / "_ltjax_test_deps.pth").write_text(f"{deps}\n")
  return venv


@pytest.mark.integration
def test_the_wheel_installs_ltjax_train_that_trains_a_recipe_from_another_directory(tmp_path):
  """`pip install <wheel>[train,data]` into a fresh venv (offline: the dependencies are this
  venv's), then `ltjax-train --config=fmnist_cnn` from a folder outside the checkout."""
  # Built from a copy of the package's sources: setuptools reuses the checkout's build/lib, where
  # a file the package no longer ships would survive and hide the mistake.
  source = tmp_path / "source"
  shutil.copytree(ROOT / "ltjax", source / "ltjax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(ROOT / name, source / name)
  wheels = tmp_path / "wheels"
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w",
                  str(wheels), str(source)], check=True, timeout=600)
  (wheel,) = wheels.glob("ltjax-*.whl")
  venv = _venv_seeing_the_dependencies(tmp_path)
  subprocess.run([str(venv / "bin" / "pip"), "install", "--no-index", "--quiet",
                  "--disable-pip-version-check", f"{wheel}[train,data]"], check=True, timeout=600)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", str(tmp_path)),
         "JAX_PLATFORMS": "cpu", "LTJAX_SHARED_DATA": str(_SHARED_DATA),
         "LTJAX_DATA_DIR": str(_TFDS_CACHE)}

  def cli(*args, **extra_env):
    return subprocess.run([str(venv / "bin" / "ltjax-train"), *args], cwd=elsewhere,
                          capture_output=True, text=True, timeout=900, check=False,
                          env={**env, **extra_env})

  where = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import ltjax.cli.train, ltjax.recipes; print(ltjax.recipes.__file__)"],
                         cwd=elsewhere, capture_output=True, text=True, env=env, check=False)
  assert where.returncode == 0, where.stderr[-3000:]
  assert where.stdout.strip().startswith(str(venv)), where.stdout
  assert (venv / "bin" / "ltjax-train").read_text().startswith(f"#!{venv}")
  # By name, with an override of the recipe: trains one epoch and writes the results.
  workdir = tmp_path / "run"
  run = cli("--config=fmnist_cnn", "--config.method=la_loss", f"--workdir={workdir}", *_TINY)
  assert run.returncode == 0, run.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  assert results["method"] == "la_loss" and results["config"]["recipe"] == "fmnist_cnn"
  assert not list(venv.glob("lib/python*/site-packages/ltjax/**/results.json"))
  # A recipe file of one's own (here a copy of the packaged one): the same config, so the
  # finished run is reported, not trained again.
  own = elsewhere / "my_recipe.py"
  own.write_text(pathlib.Path(where.stdout.strip()).with_name("fmnist_cnn.py").read_text())
  written = (workdir / "results.json").stat().st_mtime_ns
  again = cli(f"--config={own}", "--config.method=la_loss", f"--workdir={workdir}", *_TINY)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.startswith("la_loss on fashion_mnist"), again.stdout
  assert (workdir / "results.json").stat().st_mtime_ns == written
  # Unknown names and a missing raw-data location are one line each.
  unknown = cli("--config=nope", f"--workdir={tmp_path / 'x'}")
  assert unknown.returncode == 1 and len(unknown.stderr.strip().splitlines()) == 1
  assert "fmnist_cnn" in unknown.stderr
  env.pop("LTJAX_SHARED_DATA")
  nodata = cli("--config=fmnist_cnn", f"--workdir={tmp_path / 'y'}",
               LTJAX_DATA_DIR=str(tmp_path / "empty"))
  assert nodata.returncode == 1
  assert "LTJAX_SHARED_DATA" in nodata.stderr.strip().splitlines()[-1], nodata.stderr[-2000:]
