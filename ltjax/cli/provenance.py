"""Provenance of a recorded result: the command, date, device, host load and library versions.

Every file under `experiments/results/` carries these fields so that a figure can be traced to
the run that measured it; `write_record` writes the JSON and markdown pair in one place.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import sys

import flax
import jax
import numpy as np
import optax

import ltjax
from ltjax import checkpointing


def cpu_model() -> str:
  """The host CPU's model name (from /proc/cpuinfo where there is one)."""
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def device_description() -> str:
  """E.g. `8 x cpu (cpu), 1 process(es); host CPU AMD EPYC, 2 cores`."""
  devices = jax.devices()
  return (f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform}), "
          f"{jax.process_count()} process(es); host CPU {cpu_model()}, {os.cpu_count()} cores")


def library_versions() -> dict[str, str]:
  """Versions of the libraries a result depends on."""
  return {"jax": jax.__version__, "jaxlib": importlib.metadata.version("jaxlib"),
          "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__,
          "ltjax": ltjax.__version__}


def utc_now() -> str:
  """The current time in ISO 8601, UTC, to the second."""
  return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def command_line(module: str) -> str:
  """The command that re-runs this process: `python -m <module> <argv[1:]>`."""
  return " ".join(["python -m", module, *sys.argv[1:]])


def provenance(module: str) -> dict:
  """The fields every recorded result starts with."""
  return {"command": command_line(module), "date": utc_now(), "device": device_description(),
          "versions": library_versions(), "load_average_at_start": os.getloadavg()}


def versions_line(versions: dict[str, str]) -> str:
  """`jax 0.10.2, flax 0.12.8, ...` for markdown headers."""
  return ", ".join(f"{name} {version}" for name, version in versions.items())


def write_record(path_prefix: str, record: dict, markdown: str) -> None:
  """Writes `<prefix>.json` (the record) and `<prefix>.md` (the human-readable table), each
  atomically (temp file + rename: a killed writer never leaves half a table)."""
  os.makedirs(os.path.dirname(path_prefix) or ".", exist_ok=True)
  checkpointing.atomic_write_text(path_prefix + ".json", json.dumps(record, indent=1))
  checkpointing.atomic_write_text(path_prefix + ".md",
                                  markdown if markdown.endswith("\n") else markdown + "\n")
