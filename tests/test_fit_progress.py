"""`ltjax.train.fit`'s progress output: a bar on a terminal, one line per epoch in a log."""
import io
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ltjax import train as lt


class _State(NamedTuple):
  rng: jax.Array


class _Counting:
  """A fake input: `steps_per_epoch` batches of one number each."""
  steps_per_epoch = 3
  examples_per_epoch = 3

  def epoch_batches(self, rng, epoch, start_step):
    del rng
    for s in range(start_step, self.steps_per_epoch):
      yield {"x": jnp.float32(epoch * 10 + s)}


@jax.jit
def _step(state, batch, stats):
  del stats
  return state, {"loss": batch["x"], "lr": jnp.float32(0.1)}


def _fit(progress):
  state = _State(rng=jax.random.PRNGKey(0))
  return lt.fit(state, step=_step, data=_Counting(), stats=None, num_epochs=2,
                progress=progress)


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_in_a_log_is_one_line_per_epoch_without_carriage_returns(capsys):
  _, history = _fit(True)  # pytest's captured stderr is no terminal
  out, err = capsys.readouterr()
  assert "\r" not in out + err
  lines = out.splitlines()
  assert [line.split(" loss")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
  assert lines[0].startswith("epoch 1/2 loss 1.0000") and len(history) == 2
  assert [r["epoch"] for r in history] == [1, 2]  # the records count as the lines do
  assert err == "train: 6 steps, epochs 1-2 of 2\n"  # where the bar would have started


def test_progress_on_a_terminal_is_the_bar(capsys, monkeypatch):
  terminal = _Terminal()
  monkeypatch.setattr("sys.stderr", terminal)
  _fit(True)
  out, _ = capsys.readouterr()
  assert out == ""  # the bar, not lines
  assert "\r" in terminal.getvalue() and "epoch=2/2" in terminal.getvalue()


def test_no_progress_prints_nothing(capsys):
  _fit(False)
  out, err = capsys.readouterr()
  assert out == "" and err == ""
