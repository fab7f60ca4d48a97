"""Evidence inside the lungs: a training penalty on where the classifier finds its evidence.

A network that ends in global average pooling and a linear layer decides on the sum of
per-cell evidence, the class activation map (Zhou et al. 2016, "Learning Deep Features for
Discriminative Localization"): ``logit_c = mean_ij(w_c . f_ij) + b_c``. That map is what the app
shows a radiologist. On the public CT sets a model free to find evidence anywhere reads the
frame, the table and the chest wall, which tell the sources apart (../shared/data/README.md,
"known traps"); its CAM then lights up the mediastinum instead of the lungs (issue 13).

"Right for the right reasons" (Ross, Hughes & Doshi-Velez 2017) adds a loss on explanations
that fall in regions known to be irrelevant. Here the explanation is the CAM itself, exact for
this head, and the relevant region is the lung field of :func:`lunglens.preprocess.lung_field`
(lesions included): the penalty is the share of class evidence in cells outside it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from lunglens.training.data import ImageSet
    from lunglens.training.device import Runtime
    from lunglens.training.train import TrainConfig

#: A lung field covering less (a figure, a failed segmentation) or more (a crop inside the
#: lungs, as in sars-cov-2-ct) of the model's view than this says nothing about where the
#: lungs are: such images get no penalty.
USABLE_SHARE = (0.05, 0.95)


def usable_fields(fields: np.ndarray) -> np.ndarray:
    """``[N]`` bool: lung fields (uint8 ``[N, H, W]``, 255 inside) that locate the lungs."""
    share = fields.reshape(len(fields), -1).mean(1) / 255.0
    return (share >= USABLE_SHARE[0]) & (share <= USABLE_SHARE[1])


@torch.no_grad()
def lung_cells(
    data: ImageSet, fields: np.ndarray, cfg: TrainConfig, rt: Runtime, grid: int
) -> np.ndarray:
    """Share of every CAM cell inside the lung field, for every cached view of every image.

    Parameters
    ----------
    data
        The images whose frozen features are cached (same order as ``fields``).
    fields
        uint8 ``[N, H, W]`` lung fields at the training size (255 inside).
    grid
        The side of the last feature map (``size / 32`` for EfficientNet).

    Returns
    -------
    float16 ``[V, N, grid, grid]`` in [0, 1]; NaN for images without a usable lung field.
    The masks move with the views of :func:`lunglens.training.train.augmented_views` (same
    seeds and batches as the cached features), so cell ``(i, j)`` of view ``v`` covers the
    same tissue as the feature cell the network sees.
    """
    from lunglens.training.train import augmented_views  # train uses this module's penalty

    out = np.empty((cfg.feature_views, len(fields), grid, grid), np.float16)
    for v, lo, _, m in augmented_views(data, cfg, rt, masks=fields):
        assert m is not None
        cells = F.adaptive_avg_pool2d(m.float(), grid)[:, 0]
        out[v, lo : lo + len(cells)] = cells.cpu().numpy()
    out[:, ~usable_fields(fields)] = np.nan
    return out


def outside_share(maps: torch.Tensor, weight: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Per image, the share of class evidence that lies in cells outside the lungs.

    Parameters
    ----------
    maps
        ``[N, K, h, w]``: the last feature maps, before pooling.
    weight
        ``[C, K]``: the linear classifier's weights.
    inside
        ``[N, h, w]`` in [0, 1]: how much of each cell is lung field.

    The weights are centred over the classes first: softmax ignores what all classes share,
    so only the differences between classes are evidence. Positive and negative evidence
    count alike (``|.|``): a model must not argue *against* COVID from the chest wall either.
    """
    w = weight - weight.mean(0, keepdim=True)
    evidence = torch.einsum("nkhw,ck->nchw", maps, w).abs().sum(1)
    total = evidence.sum((1, 2)).clamp_min(1e-6)
    return (evidence * (1.0 - inside)).sum((1, 2)) / total


def attention_penalty(
    maps: torch.Tensor, weight: torch.Tensor, cells: np.ndarray
) -> torch.Tensor | None:
    """Mean :func:`outside_share` over the images of a batch that have a lung field.

    ``cells`` is the batch's rows of :func:`lung_cells` (NaN rows are skipped); ``None`` when no
    image of the batch has one.
    """
    inside = torch.from_numpy(cells.astype(np.float32)).to(maps.device)
    ok = ~torch.isnan(inside.flatten(1)).any(1)
    if not bool(ok.any()):
        return None
    # in float32 even inside a mixed-precision step: autocast would run the einsum in bf16
    with torch.autocast(maps.device.type, enabled=False):
        return outside_share(maps[ok].float(), weight.float(), inside[ok]).mean()
