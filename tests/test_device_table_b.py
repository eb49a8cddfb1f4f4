"""The CPU rehearsal of the device entry point `experiments.device.table_b`: the same program on a
toy bundle of the same format with a toy model and schedule. Its outputs fit what the device tool
returns, and a call stopped by its budget, then continued from nothing but what it returned,
ends with the same table as an uninterrupted call (the continuation does not redo epoch 0)."""
import io
import json
import os
import pathlib
import re
import subprocess
import sys
import tarfile

import jax
import pytest

from experiments.device import bundle
from experiments.device import carry as carry_lib
from experiments.device import table_b

REPO = pathlib.Path(__file__).resolve().parents[1]
METHODS = "ce"


def _start(tmp_path, name, *args, workdir="work"):
  """Starts one call of the entry point in a fresh process (as on the device; `workdir` is
  emptied first, as on a fresh machine), output to files; the calls share the tests'
  persistent compilation cache (conftest), so that a second run of the suite compiles nothing."""
  out = tmp_path / name
  log = (tmp_path / f"{name}.stdout").open("w"), (tmp_path / f"{name}.stderr").open("w")
  # As on the device image, tensorboardX cannot be imported (here it would import torch, ~3 s).
  absent = tmp_path / "absent" / "tensorboardX"
  absent.mkdir(parents=True, exist_ok=True)
  (absent / "__init__.py").write_text("raise ImportError('not on the device image')\n")
  env = {**os.environ, "PYTHONPATH": f"{absent.parent}{os.pathsep}{REPO}", "JAX_PLATFORMS": "cpu",
         "LTJAX_COMPILATION_CACHE": jax.config.jax_compilation_cache_dir or ""}
  proc = subprocess.Popen(
      [sys.executable, "-m", table_b.MODULE, "--bundle", str(tmp_path / "bundle"), "--out",
       str(out), "--workdir", str(tmp_path / workdir), "--schedule", "rehearsal",
       "--methods", METHODS, "--no-bench", *args], cwd=REPO, env=env, stdout=log[0],
      stderr=log[1])
  return proc, out, log


def _wait(tmp_path, started):
  """Waits for a `_start`ed call: `(exit status, stdout, stderr, out folder)`."""
  proc, out, log = started
  try:
    status = proc.wait(timeout=600)
  finally:
    if proc.poll() is None:
      proc.kill()
    for f in log:
      f.close()
  return status, pathlib.Path(log[0].name).read_text(), pathlib.Path(log[1].name).read_text(), out


def _carry(out) -> dict:
  """`{member name: bytes}` of a call's carry parts."""
  data = b"".join(p.read_bytes() for p in sorted(out.glob(carry_lib.CARRY_PREFIX + "*")))
  with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _results(carry: dict, method: str) -> list:
  return [json.loads(v) for k, v in sorted(carry.items())
          if re.search(rf"/{method}/seed\d/results.json$", k)]


def _check_returned_files(out) -> None:
  """What the device tool brings back: <= 8 plain files of <= 16 MiB, simple names."""
  files = list(out.iterdir())
  assert len(files) <= 8 and all(f.is_file() for f in files), files
  assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f.name) for f in files)
  assert all(f.stat().st_size <= 16 * 2**20 for f in files)


@pytest.mark.slow
@pytest.mark.integration  # three entry-point processes, two at once (.ci/run runs the marker)
def test_rehearsal_budget_stop_then_continuation_equals_an_uninterrupted_call(tmp_path):
  bundle.write_toy(tmp_path / "bundle")
  # The uninterrupted call and the one stopped by its budget after CE's first epoch (it refuses
  # the second) run side by side.
  whole_proc = _start(tmp_path, "whole", workdir="work-whole")
  stop_proc = _start(tmp_path, "stopped", "--stop_after_fits=1", "--no-measure_steps")
  status, stdout, stderr, out_whole = _wait(tmp_path, whole_proc)
  assert status == 0, stderr[-3000:]
  # The program's step time is printed before it trains.
  assert re.search(r"ce x3 vmapped: [\d.]+ ms/step", stdout)
  assert stdout.index("ms/step") < stdout.index("] ce: ")
  _check_returned_files(out_whole)
  assert sorted(p.name for p in out_whole.iterdir()) == [
      "carry.tar.0", "device.json", "device.md", "table_b.json", "table_b.md"]
  table = json.loads((out_whole / "table_b.json").read_text())
  rows = table["rows"]["100"]
  assert list(rows) == ["ce"] and rows["ce"]["seeds"] == [0, 1, 2]
  assert rows["ce"]["vmap_replicas"] == 3 and "best_epoch_test" in rows["ce"]
  device = json.loads((out_whole / "device.json").read_text())
  assert device["methods"]["ce"]["step"]["replicas"] == 3
  assert device["methods"]["ce"]["step"]["step_ms"] > 0 and device["calls"][0]["ended"] == "done"

  status, _, stderr, out_stop = _wait(tmp_path, stop_proc)
  assert status == table_b.EXIT_BUDGET, stderr[-3000:]
  _check_returned_files(out_stop)
  first = _carry(out_stop)
  assert any("/ce/seed0/checkpoints/" in k for k in first)  # the unfinished runs' state
  assert json.loads((out_stop / "device.json").read_text())["calls"][0]["ended"].startswith(
      "budget")
  # ... then continued in a fresh workdir from the returned files alone.
  resume = tmp_path / "carried"
  resume.mkdir()
  for part in out_stop.glob(carry_lib.CARRY_PREFIX + "*"):
    (resume / part.name).write_bytes(part.read_bytes())
  status, _, stderr, out_cont = _wait(
      tmp_path, _start(tmp_path, "continued", f"--resume={resume}", "--no-measure_steps"))
  assert status == 0, stderr[-3000:]
  _check_returned_files(out_cont)

  final = json.loads((out_cont / "table_b.json").read_text())["rows"]["100"]
  for method in ("ce",):
    for key in ("test", "best_epoch_test", "val_top1", "per_class", "best_epochs"):
      assert final[method][key] == rows[method][key], (method, key)
  a, b = _results(_carry(out_whole), "ce"), _results(_carry(out_cont), "ce")
  assert len(a) == len(b) == 3
  for ra, rb in zip(a, b):
    assert [e["loss"] for e in ra["per_epoch"]] == [e["loss"] for e in rb["per_epoch"]]
  # Epoch 0 was not trained again: its record (wall time included) is the stopped call's.
  stopped_log = first["table_b/cifar10_ir100/ce/seed0/metrics.jsonl"].decode().splitlines()
  assert b[0]["per_epoch"][0]["seconds"] == json.loads(stopped_log[0])["seconds"]
  calls = json.loads((out_cont / "device.json").read_text())["calls"]
  assert [c["ended"][:6] for c in calls] == ["budget", "done"]


def test_carry_keeps_only_the_checkpoints_a_later_call_needs(tmp_path):
  spec = table_b.table_spec("rehearsal")
  work = tmp_path / "work"
  from experiments import tables  # noqa: PLC0415

  def run(method, seed, *, finished, steps=(2, 5)):
    path = pathlib.Path(tables.run_dir(str(work), spec, method, 100.0, seed))
    for step in steps:
      (path / "checkpoints" / str(step)).mkdir(parents=True)
      (path / "checkpoints" / str(step) / "state").write_bytes(b"x" * 10)
    (path / "metrics.jsonl").write_text("{}\n")
    if finished:
      (path / "results.json").write_text('{"status": "ok"}')
    return path

  for seed in spec.seeds:
    run("ce", seed, finished=True)  # LOS (unfinished) starts from it: kept
    run("la_loss", seed, finished=True)  # nothing reuses it: its checkpoints stay behind
    run("ldam_drw", seed, finished=False)  # in progress: kept
  names = carry_lib.pack_carry(spec, str(work), str(tmp_path / "out"))
  assert names == ["carry.tar.0"]
  carry = _carry(tmp_path / "out")
  ckpts = {k.rsplit("/checkpoints/", 1)[0].split("/")[-2] + "/" + k.split("/checkpoints/")[1]
           for k in carry if "/checkpoints/" in k}
  assert ckpts == {"ce/5/state", "ldam_drw/5/state"}  # latest step only
  assert sum(k.endswith("la_loss/seed0/metrics.jsonl") for k in carry) == 1
  carry_lib.unpack_carry(str(tmp_path / "out"), str(tmp_path / "back"))
  assert (tmp_path / "back" / "table_b/cifar10_ir100/ce/seed1/checkpoints/5/state").is_file()
  with pytest.raises(FileNotFoundError, match=r"no carry.tar"):
    carry_lib.unpack_carry(str(tmp_path), str(tmp_path / "back2"))
