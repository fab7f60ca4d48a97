"""What a training recipe costs on this machine: one train step per image, projected to a run.

Usage: ``python benchmarks/bench_training_cost.py [--arch efficientnet-b5] [--sizes 96 224 456]``

Measures forward + backward + Adam step of a from-scratch model (``lunglens.training.models``)
on random single-channel images, in the same process for every size, and projects the wall
time of the ``lunglens-train`` recipe: the final model (4 folds train) plus 5-fold
cross-validation (3 folds train each), ``epochs`` epochs, on the 4,597-image CT set, plus one
validation pass per epoch (counted at a third of a train step per image). It exists to decide,
with numbers, whether a recipe fits a session on a CPU-only machine (issue #5: EfficientNet-B5).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lunglens.training.models import count_parameters, create_model

CT_IMAGES = 4597


def step_seconds_per_image(arch: str, size: int, batch: int, repeats: int) -> float:
    torch.manual_seed(0)
    model = create_model(arch, 2).train()
    if arch.startswith("efficientnet"):
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.rand(batch, 1, size, size)
    if arch.startswith("efficientnet"):
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,))
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step allocates and warms up
            times.append(time.perf_counter() - t0)
    return statistics.median(times) / batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="efficientnet-b5")
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 224, 456])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    params = count_parameters(create_model(args.arch, 2))
    print(
        f"{args.arch}: {params / 1e6:.1f} M parameters; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {args.epochs} epochs per run"
    )
    per_epoch_images = 0.8 * CT_IMAGES + 0.2 * CT_IMAGES / 3  # train + cheap validation
    cv_epoch_images = 0.6 * CT_IMAGES + 0.2 * CT_IMAGES / 3
    print(f"{'size':>5} {'s/img':>8} {'final h':>8} {'CV h':>8} {'total h':>8}")
    for size in args.sizes:
        batch = args.batch if size <= 224 else max(2, args.batch // 4)
        s = step_seconds_per_image(args.arch, size, batch, args.repeats)
        final = s * per_epoch_images * args.epochs / 3600
        cv = 5 * s * cv_epoch_images * args.epochs / 3600
        print(f"{size:5d} {s:8.3f} {final:8.2f} {cv:8.2f} {final + cv:8.2f}")


if __name__ == "__main__":
    main()
