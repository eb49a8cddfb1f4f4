"""experiments/device/table_b.sh: the flags it passes on and its chunk loop, with a stand-in
interpreter that answers like `experiments.reproduce` (75 while budget-stopped, then 0)."""
import os
import pathlib
import subprocess

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "device" / "table_b.sh"


def _run(tmp_path, statuses, *args):
  calls = tmp_path / "calls"
  fake = tmp_path / "python"
  # Each call appends its arguments and exits with the next status of the list.
  fake.write_text(
      "#!/usr/bin/env bash\n"
      f'echo "$*" >> {calls}\n'
      f"n=$(wc -l < {calls})\n"
      f"statuses=({' '.join(map(str, statuses))})\n"
      'exit "${statuses[$((n - 1))]}"\n')
  fake.chmod(0o755)
  env = {**os.environ, "PYTHON": str(fake), "LTJAX_TABLE_B_WORKDIR": str(tmp_path / "w")}
  done = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True,
                        check=False, timeout=60)
  return done.returncode, calls.read_text().splitlines(), done.stdout


def test_one_chunk_passes_the_budget_and_stops_with_75(tmp_path):
  status, calls, out = _run(tmp_path, [75, 0], "--budget_s=600")
  assert status == 75 and "run the same command again" in out
  assert calls == [(f"-m experiments.reproduce --table=B_full --workdir={tmp_path / 'w'} "
                    "--budget_s=600")]


def test_loop_runs_chunks_until_the_table_is_done(tmp_path):
  status, calls, _ = _run(tmp_path, [75, 75, 0], "--loop", "--budget_s=60")
  assert status == 0 and len(calls) == 3
  assert all("--loop" not in c and c.endswith("--budget_s=60") for c in calls)


@pytest.mark.parametrize("failure", [1, 2])
def test_a_failing_chunk_stops_the_loop_with_its_status(tmp_path, failure):
  status, calls, _ = _run(tmp_path, [75, failure, 0], "--loop")
  assert status == failure and len(calls) == 2
