"""Benchmark: host JPEG decode + augmentation, images/s per CPU core, on ImageNet-sized JPEGs.

    python -m experiments.bench.decode [--num_images=256] [--repeats=3] [--out=experiments/results]

Generates `--num_images` JPEGs of about 400x350 pixels at quality 90 (smooth colour fields plus
pixel noise, so the entropy-coded size is close to a natural photo's), then times, in this one
process and thread, what each streaming worker does per training example:
- train: `decode_random_resized_crop(size=224)` + flip, with the reduced-scale (draft) decode and
  without it;
- eval: `decode_center_crop(size=224)` (resize 256 + centre crop).
The per-core rate is images per second of this process's CPU time (`time.process_time`), which a
busy shared host does not inflate; the wall-clock rate is recorded next to it. From the per-core
training rate it derives the cores a host needs to feed `--target` images/s (3,000: one H100
training ResNet-50). Writes bench_decode.{json,md}.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import time

import numpy as np
from PIL import Image

from experiments import provenance
from ltjax import data


def generate_jpegs(num_images: int, *, width: int = 400, height: int = 350, quality: int = 90,
                   seed: int = 0) -> list[bytes]:
  """ImageNet-sized JPEGs: smooth random colour fields with noise (sizes vary by +-10%)."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(num_images):
    w = int(width * rng.uniform(0.9, 1.1))
    h = int(height * rng.uniform(0.9, 1.1))
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    freq = rng.uniform(5, 40, size=(3, 2))
    phase = rng.uniform(0, 2 * np.pi, size=3)
    field = np.stack([np.sin(x / freq[c, 0] + phase[c]) * np.cos(y / freq[c, 1])
                      for c in range(3)], -1)
    pixels = 127 + 90 * field + rng.normal(0, 12, field.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    out.append(buf.getvalue())
  return out


def _rate(fn, images, repeats: int) -> dict:
  """Best-of-`repeats` images/s over all `images`, by CPU time and by wall time."""
  cpu, wall = [], []
  for _ in range(repeats):
    c0, w0 = time.process_time(), time.perf_counter()
    for i, raw in enumerate(images):
      fn(i, raw)
    cpu.append(time.process_time() - c0)
    wall.append(time.perf_counter() - w0)
  return {"images_per_cpu_s": len(images) / min(cpu), "images_per_wall_s": len(images) / min(wall)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_images", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--target", type=float, default=3000.0)
  parser.add_argument("--out", default="experiments/results")
  args = parser.parse_args(argv)
  # The benchmark measures one core: keep every library single-threaded.
  os.environ.setdefault("OMP_NUM_THREADS", "1")
  record = provenance.provenance("experiments.bench.decode")
  images = generate_jpegs(args.num_images)
  sizes = np.array([len(b) for b in images])
  rows = {
      "train, RandomResizedCrop + flip, draft decode": _rate(
          lambda i, raw: data.decode_random_resized_crop(raw, np.random.default_rng(i),
                                                         size=args.size), images, args.repeats),
      "train, RandomResizedCrop + flip, full decode": _rate(
          lambda i, raw: data.decode_random_resized_crop(raw, np.random.default_rng(i),
                                                         size=args.size, fast=False),
          images, args.repeats),
      "eval, resize 256 + centre crop 224, draft decode": _rate(
          lambda i, raw: data.decode_center_crop(raw, size=args.size), images, args.repeats),
  }
  train_rate = rows["train, RandomResizedCrop + flip, draft decode"]["images_per_cpu_s"]
  record.update({
      "num_images": args.num_images, "jpeg_quality": 90, "nominal_size": "400x350 (+-10%)",
      "mean_jpeg_bytes": float(sizes.mean()), "output_size": args.size, "rates": rows,
      "train_images_per_s_per_core": train_rate, "target_images_per_s": args.target,
      "cores_for_target": math.ceil(args.target / train_rate),
      "load_average_at_end": os.getloadavg(),
  })
  table = "\n".join(f"| {name} | {r['images_per_cpu_s']:,.0f} | {r['images_per_wall_s']:,.0f} |"
                    for name, r in rows.items())
  markdown = (
      "# Host decode + augmentation, ImageNet-sized JPEGs\n\n"
      f"Command: `{record['command']}`  \n"
      f"Date: {record['date']}  \n"
      f"Device: {record['device']}  \n"
      f"Versions: {provenance.versions_line(record['versions'])}\n\n"
      f"{args.num_images} generated JPEGs, about 400x350 (+-10%), quality 90, mean "
      f"{sizes.mean() / 1024:.0f} KiB; output {args.size}x{args.size} RGB u8. One process, one "
      "thread; best of "
      f"{args.repeats}.\n\n"
      "| work per image | images/s per core (CPU time) | images/s (wall) |\n|---|---|---|\n"
      f"{table}\n\n"
      f"Per-core training rate: **{train_rate:,.0f} images/s** (target >= 300). Feeding one "
      f"H100 training ResNet-50 at {args.target:,.0f} images/s takes "
      f"**{math.ceil(args.target / train_rate)} cores** of this kind for decoding and "
      "augmentation alone (grain workers add a few percent for record reads and batching).\n\n"
      f"Host 1-minute load average before / after: {record['load_average_at_start'][0]:.1f} / "
      f"{record['load_average_at_end'][0]:.1f}; the CPU-time rate is what one dedicated core "
      "does, the wall rate what this shared host gave.\n")
  provenance.write_record(os.path.join(args.out, "bench_decode"), record, markdown)
  print(markdown)


if __name__ == "__main__":
  main()
