"""One training run: train on some folds, early-stop on a validation fold, checkpoint each epoch.

Recipe (Polsinelli et al. 2020; COVID-ResNet, Farooq & Hafeez 2020): Adam, cross-entropy with
label smoothing and inverse-frequency class weights, ReduceLROnPlateau(factor 0.5, patience 3)
and early stopping on a validation score, augmentation from :mod:`lunglens.training.augment`.
A run resumes from ``last.pt`` after a crash.

The validation score is the macro one-vs-rest ROC AUC by default, not the validation loss: the
shipped decision threshold is chosen afterwards on the same fold, so what the checkpoint must be
good at is *ranking*. The unweighted validation loss rewards predicting the class prior, and on
the imbalanced X-ray set it picks epoch 1 of 5. ``min_epochs`` keeps early stopping from ending a
from-scratch run before it has learned anything.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lunglens.training.attention import attention_penalty
from lunglens.training.augment import AugmentConfig, augment, augment_with_masks
from lunglens.training.data import ImageSet
from lunglens.training.device import Runtime
from lunglens.training.metrics import macro_auc
from lunglens.training.models import create_model, get_spec


@dataclass
class TrainConfig:
    arch: str = "squeezenet-light"
    size: int = 128
    epochs: int = 12
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    patience: int = 4  # early stopping, in epochs without improvement of the monitored score
    min_epochs: int = 0  # never stop early before this many epochs
    monitor: str = "auc"  # "auc" (macro one-vs-rest ROC AUC) or "loss" (validation NLL)
    plateau_patience: int = 3
    plateau_factor: float = 0.5
    seed: int = 0
    channels_last: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    #: start from the architecture's ImageNet weights (lunglens.training.models.ArchSpec)
    pretrained: bool = False
    #: "plateau" (ReduceLROnPlateau on the validation score: long runs from scratch) or
    #: "onecycle" (warm-up then cosine decay per step: short fine-tunes of pretrained weights,
    #: where a plateau never forms within 3-6 epochs)
    schedule: str = "plateau"
    #: knowledge distillation (Hinton et al. 2015), when ``train_run`` gets soft targets: the
    #: loss is (1 - alpha) * label loss + alpha * T^2 * KL(teacher_T || student_T)
    distill_alpha: float = 0.7
    distill_temperature: float = 4.0
    #: pretrained backbones: stem + this many stages stay at their ImageNet weights (BatchNorm
    #: in eval mode). Their outputs are computed once per image and augmented view
    #: (:func:`frozen_features`) and training runs the later stages only: on 2 CPU cores a full
    #: fine-tune of Lite0 at 224 px takes 320 ms per image under load, over an hour per fold of a
    #: 5-fold CV, while the early stages (edges, textures) transfer as they are.
    frozen_stages: int = 0
    #: views per image in the frozen-feature cache: the image itself plus augmented copies
    feature_views: int = 4
    #: loss weights: "class" (inverse class frequency) or "source" (classes balanced within each
    #: source, single-class sources down-weighted: :func:`source_balanced_weights`)
    balance: str = "class"
    #: with ``balance="source"``: the weight of a source that holds one class only
    single_class_source_weight: float = 0.5
    #: weight of the lung-attention penalty (:mod:`lunglens.training.attention`): the share of
    #: class evidence outside the lung field, added to the loss; runs on cached inputs only
    #: (frozen features, or a teacher's views), whose lung fields are moved with them
    lung_attention: float = 0.0


def _batches(x: np.ndarray, bs: int):
    for i in range(0, len(x), bs):
        yield x[i : i + bs]


def fill_last_batch(order: np.ndarray, bs: int) -> np.ndarray:
    """``order`` with its last partial batch filled up from its start, so every batch has the
    same shape: on CUDA each new shape costs cuDNN's autotuning 22-36 s (docs/measurements.md),
    once per run since the runs' last batches differ; the few images seen twice in the epoch
    are a different few each epoch (the order is shuffled)."""
    short = -len(order) % bs
    return np.concatenate([order, order[:short]]) if short and len(order) > short else order


def to_tensor(images: np.ndarray, rt: Runtime, channels_last: bool = False) -> torch.Tensor:
    t = torch.from_numpy(images).to(rt.device, non_blocking=True).float().div_(255.0)[:, None]
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    images: np.ndarray,
    rt: Runtime,
    bs: int = 64,
    channels_last: bool = False,
    pad: bool | None = None,
) -> np.ndarray:
    """Softmax probabilities ``[N, C]`` for uint8 images ``[N, H, W]``.

    ``pad`` (default: on CUDA) fills the last, partial batch up to ``bs`` with blank images
    and drops their outputs: on a GPU every new batch shape costs 9-36 s of cuDNN set-up
    (``benchmarks/gpu_step_time.py``, H200), and each validation and test fold has its own
    remainder. The model is in eval mode, so the padding cannot change the other outputs.
    """
    model.eval()
    pad = rt.device.type == "cuda" if pad is None else pad
    out = []
    for chunk in _batches(images, bs):
        n = len(chunk)
        if pad and n < bs:
            chunk = np.concatenate([chunk, np.zeros((bs - n, *chunk.shape[1:]), chunk.dtype)])
        with rt.autocast():
            logits = model(to_tensor(chunk, rt, channels_last))
        out.append(torch.softmax(logits.float(), 1)[:n].cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def source_balanced_weights(
    labels: np.ndarray, sources: np.ndarray, n_classes: int, single_class_weight: float
) -> np.ndarray:
    """Per-image loss weights that leave a model nothing to gain from a source's class mix.

    Within each source the classes get equal total weight (the source keeps its size), so a
    source that is 73% COVID (ct-512) no longer rewards "this look means COVID"; a source with
    one class only is scaled by ``single_class_weight``; finally the classes are balanced over
    all sources, as the inverse-frequency class weights do. Mean 1.
    """
    w = np.ones(len(labels), np.float64)
    for src in np.unique(sources):
        in_src = sources == src
        present = np.unique(labels[in_src])
        for c in present:
            cell = in_src & (labels == c)
            w[cell] = in_src.sum() / (len(present) * cell.sum())
        if len(present) == 1:
            w[in_src] *= single_class_weight
    for c in range(n_classes):
        cell = labels == c
        if cell.any():
            w[cell] *= len(labels) / (n_classes * w[cell].sum())
    return w / w.mean()


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, normalized to mean 1 (imbalanced X-ray classes need them)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    w = counts.sum() / np.maximum(counts, 1) / n_classes
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def _score(cfg: TrainConfig, val_loss: float, val_auc: float) -> float:
    """Higher is better; falls back to the loss when the AUC is undefined."""
    if cfg.monitor == "auc" and not math.isnan(val_auc):
        return val_auc
    return -val_loss


class SplitModel:
    """A :class:`~lunglens.training.models.TimmClassifier` cut after ``k`` backbone stages.

    ``frozen(x)`` runs normalization, stem and the first ``k`` stages; ``head(f)`` runs the rest
    and the classifier, so ``head(frozen(x)) == model(x)`` in eval mode.
    """

    def __init__(self, model: nn.Module, k: int) -> None:
        self.model, self.k = model, k
        self.backbone: Any = model.backbone

    def frozen(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = (x - self.model.norm_mean) / self.model.norm_std  # type: ignore[operator]
        x = b.bn1(b.conv_stem(x))
        for stage in b.blocks[: self.k]:
            x = stage(x)
        return x

    def head(self, f: torch.Tensor) -> torch.Tensor:
        return self.classify(self.head_maps(f))

    def head_maps(self, f: torch.Tensor) -> torch.Tensor:
        """The later stages and the head convolution: the maps the CAM is made of."""
        b = self.backbone
        for stage in b.blocks[self.k :]:
            f = stage(f)
        return b.bn2(b.conv_head(f))

    def classify(self, maps: torch.Tensor) -> torch.Tensor:
        """Global average pooling, dropout and the linear classifier."""
        return self.model.classifier(self.model.dropout(maps.mean((2, 3))))  # type: ignore[operator]

    def frozen_modules(self) -> list[nn.Module]:
        return [self.backbone.conv_stem, self.backbone.bn1, *self.backbone.blocks[: self.k]]


@torch.no_grad()
def frozen_features(
    data: ImageSet, cfg: TrainConfig, rt: Runtime, log=print, bs: int = 64
) -> np.ndarray:
    """Outputs of the frozen stages, float16 ``[views, N, C, h, w]`` (view 0: no augmentation).

    Computed with the pretrained weights, identical for every fold, so the pipeline computes
    them once and every run of the CV reuses them.
    """
    model = create_model(cfg.arch, len(data.classes), pretrained=True).eval()
    split = SplitModel(model, cfg.frozen_stages)
    out: np.ndarray | None = None
    t0 = time.time()
    for v, lo, x, _ in augmented_views(data, cfg, rt, bs):
        f = split.frozen(x.contiguous(memory_format=torch.channels_last)).float().cpu().numpy()
        if out is None:
            out = np.empty((cfg.feature_views, len(data.labels), *f.shape[1:]), np.float16)
        out[v, lo : lo + len(f)] = f
        if lo + bs >= len(data.labels):
            log(f"frozen features: view {v + 1}/{cfg.feature_views} ({time.time() - t0:.0f}s)")
    assert out is not None
    return out


def augmented_views(
    data: ImageSet, cfg: TrainConfig, rt: Runtime, bs: int = 64, masks: np.ndarray | None = None
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor | None]]:
    """``(view, first index, batch [n, 1, H, W] in [0, 1], masks)`` for every view of every
    image.

    View 0 is the image itself; view ``v > 0`` is augmented with a generator seeded by ``v``,
    batch after batch in index order, so the same call always yields the same views: the
    teacher's cached features and a student's cached images are of the same augmented views.
    ``masks`` (uint8 ``[N, H, W]``, 255 = inside) are moved with their images (``None`` if not
    given).
    """
    for v in range(cfg.feature_views):
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + v)
        for lo in range(0, len(data.labels), bs):
            x = to_tensor(data.images[lo : lo + bs], rt)
            m = None if masks is None else to_tensor(masks[lo : lo + bs], rt)
            if v > 0:
                x, m = augment_with_masks(x, m, cfg.augment, gen)
            yield v, lo, x, m


@torch.no_grad()
def view_images(data: ImageSet, cfg: TrainConfig, rt: Runtime, size: int) -> np.ndarray:
    """The views of :func:`augmented_views` resized to ``size`` (area), uint8 ``[V, N, s, s]``."""
    out = np.empty((cfg.feature_views, len(data.labels), size, size), np.uint8)
    for v, lo, x, _ in augmented_views(data, cfg, rt):
        small = F.interpolate(x, size=(size, size), mode="area") if x.shape[-1] != size else x
        out[v, lo : lo + len(x)] = (small[:, 0] * 255.0).round().clamp(0, 255).byte().cpu().numpy()
    return out


@torch.no_grad()
def cached_teacher_logits(
    teacher: nn.Module, frozen_stages: int, features: np.ndarray, idx: np.ndarray, bs: int = 128
) -> np.ndarray:
    """Teacher logits ``[V, N, C]`` on its cached frozen features, for the images ``idx``
    (NaN elsewhere): soft targets per augmented view, computed once per run."""
    split = SplitModel(teacher.eval(), frozen_stages)
    n_classes = int(teacher.classifier.out_features)  # type: ignore[union-attr, arg-type]
    out = np.full((features.shape[0], features.shape[1], n_classes), np.nan, np.float32)
    for v in range(features.shape[0]):
        for lo in range(0, len(idx), bs):
            part = idx[lo : lo + bs]
            x = torch.from_numpy(features[v, part].astype(np.float32))
            out[v, part] = split.head(x.contiguous(memory_format=torch.channels_last)).numpy()
    return out


Scheduler = torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau


@dataclass
class Fit:
    """What one run trains and how: the model, its optimizer, schedule and loss weights.

    Attributes
    ----------
    model
        The network (checkpoints and evaluation use it).
    net
        What the training step calls: ``model``, or its DistributedDataParallel wrapper.
    split
        The frozen/trainable cut when ``frozen_stages`` > 0 (training then runs ``split.head``
        on cached features), else ``None``.
    """

    model: nn.Module
    net: nn.Module
    split: SplitModel | None
    opt: torch.optim.Optimizer
    sched: Scheduler
    scaler: torch.amp.GradScaler
    weights: torch.Tensor
    #: per-image loss weights over the whole data set (``balance="source"``), else ``None``
    sample_weights: torch.Tensor | None = None


@dataclass
class Progress:
    """Where a run stands; saved in ``last.pt`` after every epoch so a run resumes."""

    start_epoch: int = 0
    best_score: float = -math.inf
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    elapsed: float = 0.0


def build_fit(
    data: ImageSet,
    train_idx: np.ndarray,
    cfg: TrainConfig,
    rt: Runtime,
    features: np.ndarray | None = None,
) -> Fit:
    """Create the model (seeded), freeze its first stages if asked, and its optimizer/schedule."""
    torch.manual_seed(cfg.seed)
    n_classes = len(data.classes)
    model = create_model(cfg.arch, n_classes, pretrained=cfg.pretrained).to(rt.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    split = SplitModel(model, cfg.frozen_stages) if cfg.frozen_stages else None
    if split is not None:
        if features is None:
            raise ValueError("frozen_stages needs the frozen_features() cache")
        for m in split.frozen_modules():
            m.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train_idx) / rt.world_size / cfg.batch_size))
    sched: Scheduler
    if cfg.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch, pct_start=0.15
        )
    else:
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience
        )
    scaler = torch.amp.GradScaler(enabled=rt.amp_dtype == torch.float16)
    weights = class_weights(data.labels[train_idx], n_classes).to(rt.device)
    sample_weights = None
    if cfg.balance == "source":
        full = np.zeros(len(data.labels), np.float32)
        full[train_idx] = source_balanced_weights(
            data.labels[train_idx],
            data.sources[train_idx],
            n_classes,
            cfg.single_class_source_weight,
        )
        sample_weights = torch.from_numpy(full).to(rt.device)
    elif cfg.balance != "class":
        raise ValueError(f"unknown balance {cfg.balance!r}")
    net: nn.Module = model
    if rt.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None
        )
    return Fit(model, net, split, opt, sched, scaler, weights, sample_weights)


def _batch_input(
    data: ImageSet,
    chunk: np.ndarray,
    fit: Fit,
    cfg: TrainConfig,
    rt: Runtime,
    rng: np.random.Generator,
    gen: torch.Generator,
    features: np.ndarray | None,
    views: np.ndarray | None,
) -> tuple[torch.Tensor, np.ndarray | None]:
    """The network input for the images ``chunk`` and, for cached inputs, the view of each.

    Cached frozen features (a random view per image), cached augmented views (the teacher's,
    for distillation), or the images augmented on the fly.
    """
    if fit.split is not None:
        assert features is not None
        v_idx = rng.integers(0, features.shape[0], len(chunk))
        x = torch.from_numpy(features[v_idx, chunk].astype(np.float32)).to(rt.device)
        return x.contiguous(memory_format=torch.channels_last), v_idx
    if views is not None:
        v_idx = rng.integers(0, views.shape[0], len(chunk))
        x = torch.from_numpy(views[v_idx, chunk]).to(rt.device).float().div_(255.0)
        return x[:, None], v_idx
    x = augment(to_tensor(data.images[chunk], rt), cfg.augment, gen)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, None


def _label_loss(
    logits: torch.Tensor, y: torch.Tensor, fit: Fit, chunk: np.ndarray, smoothing: float
) -> torch.Tensor:
    """Cross-entropy with label smoothing, weighted per class or per image (``Fit``)."""
    if fit.sample_weights is None:
        return F.cross_entropy(logits, y, weight=fit.weights, label_smoothing=smoothing)
    w = fit.sample_weights[torch.from_numpy(chunk).to(fit.sample_weights.device)]
    each = F.cross_entropy(logits, y, reduction="none", label_smoothing=smoothing)
    return (each * w).sum() / w.sum().clamp_min(1e-12)


def _logits_and_maps(
    fit: Fit, x: torch.Tensor, arch: str, want_maps: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The logits and, when asked, the CAM layer's maps (the classifier's input, before pooling).

    On cached frozen features the split head gives both. A whole network is called through
    ``fit.net`` (its DistributedDataParallel wrapper under torchrun, so gradients stay in sync),
    and the maps are taken by a forward hook on the architecture's CAM layer
    (:attr:`lunglens.training.models.ArchSpec.cam_layer`).
    """
    if fit.split is not None:
        maps = fit.split.head_maps(x)
        return fit.split.classify(maps), maps
    if not want_maps:
        return fit.net(x), None
    layers: dict[str, nn.Module] = fit.model.gallery_layers  # type: ignore[assignment]
    layer = layers[get_spec(arch).cam_layer]
    seen: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        logits = fit.net(x)
    finally:
        hook.remove()
    return logits, seen[-1]


def train_one_epoch(
    fit: Fit,
    data: ImageSet,
    train_idx: np.ndarray,
    epoch: int,
    cfg: TrainConfig,
    rt: Runtime,
    gen: torch.Generator,
    features: np.ndarray | None = None,
    views: np.ndarray | None = None,
    soft_targets: np.ndarray | None = None,
    lungs: np.ndarray | None = None,
) -> float:
    """One pass over this rank's share of ``train_idx`` in a seeded order; the mean loss.

    The one-cycle schedule steps per batch; the plateau schedule steps on the validation score
    (in :func:`train_run`). ``lungs`` (:func:`lunglens.training.attention.lung_cells` of the
    cached frozen features or views, at the CAM layer's grid) adds the lung-attention penalty.
    """
    fit.net.train()
    if fit.split is not None:  # frozen BatchNorm keeps its ImageNet statistics
        for m in fit.split.frozen_modules():
            m.eval()
    rng = np.random.default_rng(cfg.seed * 1000 + epoch)
    order = train_idx[rng.permutation(len(train_idx))]
    order = order[rt.rank :: rt.world_size]
    if rt.device.type == "cuda":
        order = fill_last_batch(order, cfg.batch_size)
    total, seen = 0.0, 0
    for chunk in _batches(order, cfg.batch_size):
        if len(chunk) < 2:
            continue  # BatchNorm needs more than one sample
        y = torch.from_numpy(data.labels[chunk]).to(rt.device)
        x, v_idx = _batch_input(data, chunk, fit, cfg, rt, rng, gen, features, views)
        penalize = lungs is not None and cfg.lung_attention > 0
        with rt.autocast():
            logits, maps = _logits_and_maps(fit, x, cfg.arch, penalize)
            loss = _label_loss(logits.float(), y, fit, chunk, cfg.label_smoothing)
            if soft_targets is not None:  # the teacher's logits on the same cached views
                soft = torch.from_numpy(soft_targets[v_idx, chunk]).to(rt.device)
                loss = (1 - cfg.distill_alpha) * loss + cfg.distill_alpha * distill_loss(
                    logits.float(), soft, cfg.distill_temperature
                )
            if penalize:  # added after the distillation mix: its weight is the preset's own
                assert lungs is not None and maps is not None
                weight: torch.Tensor = fit.model.classifier.weight  # type: ignore[union-attr,assignment]
                pen = attention_penalty(maps, weight, lungs[v_idx, chunk])
                if pen is not None:
                    loss = loss + cfg.lung_attention * pen
        fit.opt.zero_grad(set_to_none=True)
        fit.scaler.scale(loss).backward()
        fit.scaler.step(fit.opt)
        fit.scaler.update()
        if cfg.schedule == "onecycle" and fit.sched.last_epoch + 1 < fit.sched.total_steps:  # type: ignore[union-attr]
            fit.sched.step()  # type: ignore[call-arg]
        total += float(loss.detach()) * len(chunk)
        seen += len(chunk)
    return total / max(seen, 1)


def evaluate(
    fit: Fit,
    data: ImageSet,
    val_idx: np.ndarray,
    cfg: TrainConfig,
    rt: Runtime,
    features: np.ndarray | None = None,
) -> dict[str, float]:
    """Validation loss (unweighted NLL), accuracy (argmax) and macro one-vs-rest ROC AUC."""
    if fit.split is not None:
        assert features is not None
        probs = _head_probs(fit.split, features[0, val_idx], rt)
    else:
        probs = predict_probs(fit.model, data.images[val_idx], rt, channels_last=cfg.channels_last)
    y_val = data.labels[val_idx]
    val_loss = float(
        F.nll_loss(torch.log(torch.from_numpy(probs).clamp_min(1e-7)), torch.from_numpy(y_val))
    )
    return dict(
        val_loss=val_loss,
        val_acc=float((probs.argmax(1) == y_val).mean()),
        val_auc=macro_auc(y_val, probs),
    )


def save_best(fit: Fit, data: ImageSet, cfg: TrainConfig, epoch: int, workdir: Path) -> None:
    """``best.pt``: the weights of the best epoch so far, with the config and class names."""
    torch.save(
        {
            "model": fit.model.state_dict(),
            "epoch": epoch,
            "cfg": asdict(cfg),
            "classes": data.classes,
        },
        workdir / "best.pt",
    )


def save_last(fit: Fit, progress: Progress, epoch: int, last: Path) -> None:
    """``last.pt``: everything :func:`resume` needs, replaced atomically."""
    torch.save(
        {
            "model": fit.model.state_dict(),
            "opt": fit.opt.state_dict(),
            "sched": fit.sched.state_dict(),
            "epoch": epoch,
            "best_score": progress.best_score,
            "bad_epochs": progress.bad_epochs,
            "history": progress.history,
            "elapsed": progress.elapsed,
        },
        last.with_suffix(".tmp"),
    )
    last.with_suffix(".tmp").replace(last)


def resume(fit: Fit, last: Path, rt: Runtime) -> Progress:
    """Load ``last.pt`` into ``fit``; the progress to continue from."""
    ck = torch.load(last, map_location=rt.device, weights_only=False)
    fit.model.load_state_dict(ck["model"])
    fit.opt.load_state_dict(ck["opt"])
    fit.sched.load_state_dict(ck["sched"])
    return Progress(
        ck["epoch"] + 1, ck["best_score"], ck["bad_epochs"], ck["history"], ck["elapsed"]
    )


def train_run(
    data: ImageSet,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    cfg: TrainConfig,
    rt: Runtime,
    workdir: Path,
    log=print,
    features: np.ndarray | None = None,
    views: np.ndarray | None = None,
    soft_targets: np.ndarray | None = None,
    lungs: np.ndarray | None = None,
) -> dict:
    """Train one model; returns facts about the run (best epoch, losses, wall time).

    ``workdir`` receives ``last.pt`` (every epoch, for resume), ``best.pt`` (best validation
    score, see :class:`TrainConfig`) and ``history.json``. If ``done.json`` exists the run is
    skipped.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    done = workdir / "done.json"
    if done.exists():
        log(f"[{workdir.name}] already trained, skipping")
        return json.loads(done.read_text())
    if cfg.lung_attention > 0 and (lungs is None or (features is None and views is None)):
        raise ValueError(
            "lung_attention needs cached inputs (frozen features or a teacher's views) and "
            "their lung cells: on-the-fly augmentation would move the lungs away from them"
        )
    fit = build_fit(data, train_idx, cfg, rt, features)
    progress = Progress()
    last = workdir / "last.pt"
    if last.exists():
        progress = resume(fit, last, rt)
        log(f"[{workdir.name}] resumed at epoch {progress.start_epoch}")
    gen = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(progress.start_epoch, cfg.epochs):
        t0 = time.time()
        train_loss = train_one_epoch(
            fit, data, train_idx, epoch, cfg, rt, gen, features, views, soft_targets, lungs
        )
        val = evaluate(fit, data, val_idx, cfg, rt, features)
        score = _score(cfg, val["val_loss"], val["val_auc"])
        if cfg.schedule != "onecycle":
            fit.sched.step(score)  # type: ignore[arg-type]
        dt = time.time() - t0
        progress.elapsed += dt
        lr = fit.opt.param_groups[0]["lr"]
        progress.history.append(
            dict(epoch=epoch, train_loss=train_loss, **val, score=score, lr=lr, seconds=dt)
        )
        improved = score > progress.best_score + 1e-4
        if improved:
            progress.best_score, progress.bad_epochs = score, 0
            if rt.is_main:
                save_best(fit, data, cfg, epoch, workdir)
        else:
            progress.bad_epochs += 1
        log(
            f"[{workdir.name}] epoch {epoch + 1}/{cfg.epochs} train_loss {train_loss:.4f} "
            f"val_loss {val['val_loss']:.4f} val_acc {val['val_acc']:.4f} "
            f"val_auc {val['val_auc']:.4f} lr {lr:.1e} {dt:.0f}s{' *' if improved else ''}"
        )
        if rt.is_main:
            save_last(fit, progress, epoch, last)
        if progress.bad_epochs >= cfg.patience and cfg.min_epochs <= epoch + 1 < cfg.epochs:
            log(f"[{workdir.name}] early stop after epoch {epoch + 1}")
            break
    facts = _run_facts(progress, cfg, len(train_idx), len(val_idx))
    if rt.is_main:
        (workdir / "history.json").write_text(json.dumps(facts, indent=1))
        done.write_text(json.dumps(facts))
    return facts


def _run_facts(progress: Progress, cfg: TrainConfig, n_train: int, n_val: int) -> dict:
    """What ``done.json`` records: the best epoch (1-based), its validation loss and AUC, time."""
    history = progress.history
    best_epoch = int(np.argmax([h["score"] for h in history])) if history else -1
    return dict(
        best_epoch=best_epoch + 1,
        epochs_run=len(history),
        seconds=progress.elapsed,
        best_val_loss=history[best_epoch]["val_loss"] if history else math.nan,
        best_val_auc=history[best_epoch]["val_auc"] if history else math.nan,
        monitor=cfg.monitor,
        history=history,
        n_train=n_train,
        n_val=n_val,
    )


@torch.no_grad()
def _head_probs(split: SplitModel, feats: np.ndarray, rt: Runtime, bs: int = 128) -> np.ndarray:
    """Softmax of the trainable part on cached frozen features (eval mode)."""
    split.model.eval()
    out = []
    for lo in range(0, len(feats), bs):
        x = torch.from_numpy(feats[lo : lo + bs].astype(np.float32)).to(rt.device)
        out.append(torch.softmax(split.head(x).float(), 1).cpu().numpy())
    return np.concatenate(out)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` (Hinton et al. 2015).

    The ``T^2`` factor keeps the soft-target gradients on the scale of the label loss's.
    """
    t = temperature
    return F.kl_div(
        F.log_softmax(student / t, 1),
        F.log_softmax(teacher.float() / t, 1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)


def load_best(workdir: Path, arch: str, n_classes: int, device: str = "cpu") -> nn.Module:
    model = create_model(arch, n_classes)
    ck = torch.load(workdir / "best.pt", map_location=device, weights_only=False)
    model.load_state_dict(ck["model"])
    return model.eval()
