"""What one call of Table B's device run hands the next (`experiments.device.table_b`):
`carry.tar.<i>` parts under the call's output folder holding the table's run folders, without the
checkpoints no remaining row needs (the latest step only of those it needs).

The device tool returns at most 8 files of at most 16 MiB each, and a call's working tree travels
in at most 64 MiB: the parts are cut to fit both.
"""
from __future__ import annotations

import io
import os
import pathlib
import tarfile

CARRY_PREFIX = "carry.tar."
# The device tool returns at most 8 files of at most 16 MiB: 4 are the reports.
CARRY_PART_BYTES = 15 * 2**20
MAX_CARRY_PARTS = 3  # + 4 reports + the call's log (tee'd into $OUT) = 8 files
# Above this, bundle + code + carry may not travel back in the next call (64 MiB).
CARRY_WARN_BYTES = 14 * 2**20


def _needs_checkpoints(spec, workdir: str, ir: float) -> set:
  """Run folders whose checkpoints a later call needs: unfinished runs, and the runs of a
  method that an unfinished row reuses (its same-training source or stage-1 run)."""
  from experiments import tables  # noqa: PLC0415

  reuse = {**tables.same_training(spec), **tables.stage1_sources()}
  keep = set()
  for method in spec.methods:
    for seed in spec.seeds:
      path = tables.run_dir(workdir, spec, method, ir, seed)
      if tables.read_ok_results(path) is None:
        keep.add(path)
        if method in reuse:
          keep.add(tables.run_dir(workdir, spec, reuse[method], ir, seed))
  return keep


def _checkpoint_files(ckpt_dir: pathlib.Path) -> list[pathlib.Path]:
  """The files of a run's checkpoints folder that restoring its latest step needs: the latest
  step's folder and the top-level files (older steps are left behind)."""
  steps = [p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.isdigit()]
  latest = max(steps, key=lambda p: int(p.name)) if steps else None
  out = []
  for p in ckpt_dir.iterdir():
    if p.is_dir() and p.name.isdigit() and p != latest:
      continue
    out += [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
  return out


def pack_carry(spec, workdir: str, out: str) -> list[str]:
  """Writes what a later call needs of `workdir` as `carry.tar.<i>` parts under `out` (each
  written whole, then renamed): the table's run folders without the checkpoints no remaining
  row needs, and this module's records. Returns the part names."""
  root = pathlib.Path(workdir)
  keep = {pathlib.Path(p) for ir in spec.imbalance_ratios
          for p in _needs_checkpoints(spec, workdir, ir)}
  files = []
  for f in sorted(p for p in root.rglob("*") if p.is_file()):
    parts = f.relative_to(root).parts
    if "checkpoints" in parts:
      run = root.joinpath(*parts[:parts.index("checkpoints")])
      if run not in keep:
        continue
    files.append(f)
  kept = set()
  for run in keep:
    ckpt = run / "checkpoints"
    if ckpt.is_dir():
      kept.update(_checkpoint_files(ckpt))
  files = [f for f in files if "checkpoints" not in f.relative_to(root).parts or f in kept]
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w") as tar:
    for f in files:
      tar.add(f, arcname=f.relative_to(root).as_posix())
  data = buffer.getvalue()
  chunks = [data[i:i + CARRY_PART_BYTES] for i in range(0, len(data), CARRY_PART_BYTES)]
  if len(chunks) > MAX_CARRY_PARTS:
    raise RuntimeError(f"The carry is {len(data) / 2**20:.1f} MiB, more than the "
                       f"{MAX_CARRY_PARTS} parts of {CARRY_PART_BYTES / 2**20:.0f} MiB that "
                       "can come back.")
  os.makedirs(out, exist_ok=True)
  for old in pathlib.Path(out).glob(CARRY_PREFIX + "*"):
    old.unlink()
  if len(data) > CARRY_WARN_BYTES:
    print(f"The carry is {len(data) / 2**20:.1f} MiB: with the ~45 MiB bundle and the code, the "
          "next call's working tree may pass the 64 MiB that travel (run fewer --methods: "
          "checkpoints are kept only for the selected rows).", flush=True)
  names = []
  for i, chunk in enumerate(chunks):
    name = f"{CARRY_PREFIX}{i}"
    tmp = pathlib.Path(out) / f"partial-{name}"
    tmp.write_bytes(chunk)
    tmp.rename(pathlib.Path(out) / name)
    names.append(name)
  return names


def unpack_carry(carry_dir: str, workdir: str) -> int:
  """Restores `carry.tar.<i>` parts (a previous call's) into `workdir`; returns their bytes."""
  parts = sorted(pathlib.Path(carry_dir).glob(CARRY_PREFIX + "*"),
                 key=lambda p: int(p.name[len(CARRY_PREFIX):]))
  if not parts:
    raise FileNotFoundError(f"`resume` {carry_dir} holds no {CARRY_PREFIX}* parts (copy the "
                            "previous call's returned files there).")
  indices = [int(p.name[len(CARRY_PREFIX):]) for p in parts]
  if indices != list(range(len(parts))):
    raise FileNotFoundError(f"`resume` {carry_dir}: carry parts {indices} are not 0..n-1: one "
                            "is missing.")
  data = b"".join(p.read_bytes() for p in parts)
  with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
    tar.extractall(workdir, filter="data")
  return len(data)
