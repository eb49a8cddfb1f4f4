"""The CLI's flag handling: a mistake is one line, `--config_help` lists keys, methods, domains."""
import fcntl
import os
import subprocess
import sys

import pytest

from ltjax import checkpointing
from ltjax import train as lt
from ltjax.cli import _config_flags

RECIPE = "experiments/configs/fmnist_cnn.py"


def _main(*args):
  return subprocess.run([sys.executable, "-m", "experiments.main", f"--config={RECIPE}",
                         "--workdir=/nonexistent/ltjax-never-written", *args],
                        capture_output=True, text=True, timeout=300, check=False)


def test_config_key_typo_is_one_line_with_the_suggestion():
  run = _main("--config.num_epoch=1", "--config.hparams.tauu=2")
  assert run.returncode == 1
  assert run.stderr.strip().splitlines() == [
      ("--config.num_epoch: the recipe has no key 'num_epoch'; did you mean "
       "--config.num_epochs? (--config_help lists the keys)")]


def test_config_help_lists_keys_methods_and_domains():
  run = _main("--config_help")
  assert run.returncode == 0, run.stderr
  out = run.stdout
  assert "  num_epochs = 5" in out and "  hparams.tau = 1.0" in out
  for name in lt.METHODS:
    assert f"\n  {name}  [" in out
  assert "focal_gamma = 1.0  (a finite number >= 0)" in out


def test_missing_recipe_file_is_one_line():
  run = subprocess.run([sys.executable, "-m", "experiments.main", "--config=nope/r.py",
                        "--workdir=/tmp/x"], capture_output=True, text=True, timeout=300,
                       check=False)
  assert run.returncode == 1
  assert run.stderr.strip() == "--config=nope/r.py: no such recipe file."


def test_unknown_key_line_names_the_nearest_sibling():
  config = _config_flags.load_config(RECIPE)
  assert _config_flags.unknown_key_line(config, "num_epochs") is None
  assert _config_flags.unknown_key_line(config, "hparams.tau") is None
  line = _config_flags.unknown_key_line(config, "hparams.focal_gama")
  assert "did you mean --config.hparams.focal_gamma?" in line
  assert "did you mean" not in _config_flags.unknown_key_line(config, "zzzzzz")


def test_workdir_lock_file_is_removed_when_the_run_ends(tmp_path):
  with checkpointing.WorkdirLock(tmp_path):
    assert os.listdir(tmp_path) == [checkpointing.LOCK_FILE]
  assert os.listdir(tmp_path) == []
  with pytest.raises(RuntimeError), checkpointing.WorkdirLock(tmp_path):
    raise RuntimeError
  assert os.listdir(tmp_path) == []


def test_workdir_lock_does_not_keep_a_file_removed_under_it(tmp_path, monkeypatch):
  """A run that opened the lock file just before its holder removed it must not hold the
  removed file's lock (two runs would then hold 'the' lock): it locks the new file."""
  path = tmp_path / checkpointing.LOCK_FILE
  real_flock = fcntl.flock
  removed = []

  def flock_after_removal(fd, op):
    if not removed:  # the holder ends between our open and our flock
      removed.append(True)
      os.unlink(path)
    return real_flock(fd, op)

  monkeypatch.setattr(checkpointing.fcntl, "flock", flock_after_removal)
  lock = checkpointing.WorkdirLock(tmp_path)
  with lock:
    fd = checkpointing._HELD[lock.path][0]
    assert os.stat(path).st_ino == os.fstat(fd).st_ino
