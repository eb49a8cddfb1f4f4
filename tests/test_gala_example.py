"""The raw-JAX GALA example runs and shows what it claims: GALA beats CE on balanced accuracy."""
import re
import runpy


def test_gala_linear_example_runs_and_gala_beats_ce(capsys):
  runpy.run_module("experiments.examples.gala_linear", run_name="__main__")
  lines = capsys.readouterr().out.splitlines()
  accuracy = {tuple(m.group(1, 2)): float(m.group(3)) for m in
              (re.match(r"\s*(CE|GALA) \+ (\w+)\s*: balanced accuracy ([\d.]+)", line)
               for line in lines)
              if m}
  assert len(accuracy) == 4, lines
  assert accuracy[("GALA", "argmax")] > accuracy[("CE", "argmax")] + 0.02
  assert accuracy[("CE", "rebalance")] > accuracy[("CE", "argmax")]
