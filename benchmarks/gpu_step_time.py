"""Training step time of EfficientNet-Lite0 on a CUDA GPU, with and without cuDNN autotuning.

Why: on a lent H200 (docs/measurements.md) the first epoch of a run took 25-77 s whenever the
run brought batch shapes not seen before, against 3-5 s for the others: ``cudnn.benchmark``
tunes every new input shape (the last, partial batch of each run's training and validation
sets). This measures, in one process per setting, the first step at a new shape and the steady
step time, so the trade-off is a measured ratio, not a guess.

Usage (on a GPU machine)::

    python benchmarks/gpu_step_time.py            # prints one table per setting
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np


def measure(benchmark: bool, shapes: tuple[int, ...] = (32, 17, 23, 9), steps: int = 30) -> dict:
    """Seconds for the first training step at each batch size (new shapes, in order) and the
    median of ``steps`` later steps at batch 32, with ``cudnn.benchmark`` as given."""
    import torch
    import torch.nn.functional as F

    from lunglens.training.models import create_model

    torch.backends.cudnn.benchmark = benchmark
    dev = torch.device(os.environ.get("LUNGLENS_BENCH_DEVICE", "cuda"))  # "cpu": a dry run
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    model = create_model("efficientnet-lite0", 2).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(n: int) -> float:
        x = torch.rand(n, 1, 224, 224, device=dev).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 2, (n,), device=dev)
        sync()
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        return time.perf_counter() - t0

    first = {n: step(n) for n in shapes}
    steady = float(np.median([step(32) for _ in range(steps)]))
    return dict(benchmark=benchmark, first_step_s=first, steady_step_ms=1000 * steady)


def main() -> int:
    if len(sys.argv) > 1:  # child: one setting per process (cuDNN's cache is per process)
        print(json.dumps(measure(sys.argv[1] == "on")))
        return 0
    rows = []
    for setting in ("on", "off"):
        out = subprocess.run(
            [sys.executable, __file__, setting], capture_output=True, text=True, check=True
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for r in rows:
        firsts = ", ".join(f"bs {n}: {s:.2f} s" for n, s in r["first_step_s"].items())
        print(
            f"cudnn.benchmark={r['benchmark']}: first step {firsts}; "
            f"steady {r['steady_step_ms']:.1f} ms/step (batch 32)"
        )
    on, off = rows
    print(
        f"steady-state ratio off/on: {off['steady_step_ms'] / on['steady_step_ms']:.2f}; "
        f"new-shape cost on/off: {on['first_step_s']['17'] / off['first_step_s']['17']:.1f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
