"""Child processes of the multi-process CLI tests: free coordinator ports, and no child outliving
its test."""
import contextlib
import socket


def free_port() -> int:
  """A TCP port on localhost that is free now (for a `jax.distributed` coordinator)."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def killed_on_exit(procs):
  """Kills every process of `procs` still running when the block exits, however it exits: a run
  that hangs (e.g. in a cross-process collective) fails its test on the wait's timeout and does
  not outlive it (a hung process ignores SIGTERM, hence SIGKILL)."""
  try:
    yield procs
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
