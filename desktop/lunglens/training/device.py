"""Device, precision and distributed set-up chosen automatically.

CPU here (2 cores); on a CUDA machine the same command uses the GPU with bf16/fp16 autocast, and
under ``torchrun --nproc_per_node=K`` one process per GPU with DistributedDataParallel.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        amp = str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32"
        threads = torch.get_num_threads()
        return f"{name} x{self.world_size} ({amp}, torch {torch.__version__}, {threads} threads)"


def setup_runtime(prefer: str = "auto") -> Runtime:
    """Pick the device: CUDA if present (unless ``prefer='cpu'``), else CPU with all cores."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if prefer != "cpu" and torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        torch.backends.cudnn.benchmark = True
    else:
        device = torch.device("cpu")
        amp = None  # bf16 autocast measured slower than fp32 on this CPU (docs/measurements.md)
        # LUNGLENS_TORCH_THREADS: several runs side by side on one machine, one thread each
        # (two runs of two threads on two cores spin against each other: 4x slower measured)
        default = max(1, (os.cpu_count() or 2) // max(1, world))
        torch.set_num_threads(int(os.environ.get("LUNGLENS_TORCH_THREADS", default)))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(device, amp, rank, world)
