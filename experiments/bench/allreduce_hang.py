"""A reproducer, outside ltjax, for the 2-process CPU all-reduce hang (README, known gaps).

Plain `jax.distributed` + a jitted data-parallel step with a cross-process all-reduce (a mean of
gradients over a global "data" mesh of P processes x D CPU devices, Gloo collectives), repeated
for many steps and many runs. Nothing of ltjax is imported: a hang here is in jax / XLA:CPU /
Gloo, not in ltjax's loop.

    python -m experiments.bench.allreduce_hang --runs 10 --steps 300 --devices 2 [--block]

Each run starts P processes; a run that does not finish within --run_timeout_s is reported as
hung (with the last step each process printed) and killed. Prints one line per run and a summary.

Measured (jax / jaxlib 0.10.2, Gloo CPU collectives, 2 processes on one 2-core host at load
5-12, 300 steps of a 64 x 64 model, 150 s per run):

- 2 devices per process, steps dispatched ahead (the default): 4 of 4 runs hung, after 5 to 38
  steps of one process. gdb on a hung process: its two device threads are both inside
  `xla::cpu::AllReduceThunk` -> `GlooCommunicator::AllReduce` -> `gloo::allreduce`, one in
  `UnboundBuffer::waitRecv`, the other in `waitSend`; the Python thread waits on the result.
  Deadlocked, not slow: two such processes left running (their runner killed) stayed 16 min at
  the same step using 0.1 s of CPU per 40 s (the coordination heartbeat), and ignored SIGTERM.
- 2 devices per process, `--block` (each step waited for before the next): 0 of 4 hung.
- 4 devices per process: dispatched ahead 2 of 2 hung (both processes at step 38-39); `--block`
  0 of 2.
- 1 device per process, dispatched ahead: 0 of 3 hung.

So the hang needs several devices per process and several steps in flight: the device threads
of one process then take part in all-reduces of different steps over the same Gloo
communicator, and the two processes pair them up differently. It is in XLA:CPU / Gloo, not in
ltjax. ltjax's mitigation: `serialize_steps` in ltjax/train/_watchdog.py (multi-process CPU
runs with several devices per process wait for each step) and the step deadline
(`ltjax.train.StepDeadline`).
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

_WORKER = r"""
import os, sys, time
import jax, jax.numpy as jnp, numpy as np
pid, nproc, port, steps, width, block = (int(a) for a in sys.argv[1:7])
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{port}", num_processes=nproc, process_id=pid)
mesh = jax.make_mesh((jax.device_count(),), ("data",), devices=jax.devices())
rows = jax.NamedSharding(mesh, jax.P("data"))
repl = jax.NamedSharding(mesh, jax.P())

@jax.jit
def step(w, x):
  # A linear model's mean-squared-error gradient: the batch mean is a cross-process all-reduce.
  g = jax.grad(lambda w: jnp.mean((x @ w) ** 2))(w)
  return w - 1e-3 * g, jnp.sum(g)

w = jax.device_put(jnp.ones((width, width), jnp.float32), repl)
local = np.ones((jax.local_device_count() * 4, width), np.float32)
x = jax.make_array_from_process_local_data(rows, local)
for s in range(steps):
  w, loss = step(w, x)
  if block:  # else dispatched ahead, as a training loop does (several steps in flight)
    loss.block_until_ready()
  print(f"{pid} step {s + 1}", flush=True)
w.block_until_ready()
print(f"{pid} done", flush=True)
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def run_once(*, processes: int, devices: int, steps: int, width: int, block: bool,
             timeout_s: float) -> tuple[bool, float, list[str]]:
  """One run: `(finished, seconds, last line of each process)`."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  port = _free_port()
  logs = [open(os.devnull, "w") for _ in range(processes)]  # noqa: SIM115 (closed below)
  procs, outs = [], []
  started = time.monotonic()
  try:
    for pid in range(processes):
      procs.append(subprocess.Popen(
          [sys.executable, "-c", _WORKER, str(pid), str(processes), str(port), str(steps),
           str(width), str(int(block))],
          env=env, stdout=subprocess.PIPE, stderr=logs[pid], text=True))
    deadline = started + timeout_s
    for p in procs:
      try:
        out, _ = p.communicate(timeout=max(deadline - time.monotonic(), 0.1))
      except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
      outs.append(out or "")
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    for f in logs:
      f.close()
  finished = all(p.returncode == 0 for p in procs)
  last = [(o.strip().splitlines() or ["(nothing)"])[-1] for o in outs]
  return finished, time.monotonic() - started, last


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--runs", type=int, default=10)
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--devices", type=int, default=2, help="CPU devices per process")
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--width", type=int, default=64)
  parser.add_argument("--block", action="store_true",
                      help="wait for each step before dispatching the next")
  parser.add_argument("--run_timeout_s", type=float, default=300)
  args = parser.parse_args(argv)
  hung = 0
  for run in range(args.runs):
    finished, seconds, last = run_once(processes=args.processes, devices=args.devices,
                                       steps=args.steps, width=args.width, block=args.block,
                                       timeout_s=args.run_timeout_s)
    hung += not finished
    print(f"run {run + 1}: {'finished' if finished else 'HUNG/FAILED'} in {seconds:.0f} s; "
          f"last lines: {' | '.join(last)}", flush=True)
  blocking = ", blocking" if args.block else ""
  print(f"{hung} of {args.runs} runs hung or failed ({args.processes} processes x "
        f"{args.devices} devices, {args.steps} steps{blocking}, jax {_jax_version()})", flush=True)
  return 1 if hung else 0


def _jax_version() -> str:
  import importlib.metadata  # noqa: PLC0415 (only for the summary line)
  return importlib.metadata.version("jax")


if __name__ == "__main__":
  sys.exit(main())
