"""The end-to-end recipe behind ``lunglens-train NAME``: CV, final model, ONNX, INT8, model card.

Stages (each skipped when its output exists, so a killed run resumes where it stopped):

1. decode the data set once at the training size (cached in ``<workdir>/images_<size>.npz``);
2. ``final``: train on every fold but ``val_fold``; ``val_fold`` early-stops and picks the
   operating threshold;
3. ``export`` to ONNX (float) and check it against PyTorch;
4. ``quantize`` to INT8 (QDQ) with calibration on training images; parity on ``val_fold``;
5. write ``models/<name>/`` (model.onnx = INT8, manifest.json, MODEL_CARD.md) so the app can use
   the model while the cross-validation runs;
6. ``cv``: group-wise k-fold; fold k is the test fold, fold (k+1) mod k early-stops and picks
   that fold's threshold, the rest train. Test-fold predictions are pooled for per-source metrics;
7. update the manifest, metrics.json, ROC and confusion plots, and the model card.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from lunglens.io import Modality
from lunglens.models.hashing import sha256_of
from lunglens.models.manifest import ModelManifest
from lunglens.models.seal import plain_json
from lunglens.preprocess import lung_field
from lunglens.training.data import ImageSet, load_imageset, read_manifest, save_image_cache
from lunglens.training.device import setup_runtime
from lunglens.training.models import get_spec
from lunglens.training.presets import Preset
from lunglens.training.train import TrainConfig, load_best, predict_probs, train_run
from lunglens.xray_lungs import xray_lung_field

N_FOLDS = 5
#: How the app aggregates a CT series (written to the manifest, checked per patient in the CV).
SERIES_METHOD, SERIES_K = "top_k_mean", 3


@dataclass(frozen=True)
class LungField:
    """A modality's lung-field rule and the words the card's CAM check uses for it."""

    find: Callable[[np.ndarray], np.ndarray]
    words: str


#: The lung field that the card's share of CAM mass is measured in, and the lung-attention
#: penalty trains against, per modality (:meth:`Pipeline.stage_cam_check`).
LUNG_FIELDS: dict[str, LungField] = {
    Modality.CT: LungField(lung_field, "the lungs with the lesions inside them"),
    Modality.CXR: LungField(
        xray_lung_field,
        "both lung fields by marker-controlled watershed, checked against hand outlines in "
        "docs/measurements.md",
    ),
}


#: What ``--stages parity`` measured on the shipped files and wrote into the model folder only
#: (that stage keeps no run state).
MEASURED_AGAIN = ("parity_validation_fold", "parity_shipped_threshold", "parity_measured_again")


def keep_measured_again(folder: Path, manifest: ModelManifest) -> ModelManifest:
    """``manifest`` with ``folder``'s ``--stages parity`` record kept while the INT8 file is
    the same one (same SHA-256): a run that rewrote the card (for a new comparison row) used
    to drop it."""
    path = folder / "manifest.json"
    if not path.is_file() or manifest.quantization is None:
        return manifest
    old = json.loads(path.read_text())
    old_q = old.get("quantization") or {}
    if old.get("sha256") != manifest.sha256 or "parity_measured_again" not in old_q:
        return manifest
    kept = {k: old_q[k] for k in MEASURED_AGAIN if k in old_q}
    return replace(manifest, quantization={**manifest.quantization, **kept})


@dataclass
class PipelineOptions:
    data_root: Path
    models_dir: Path
    workdir: Path
    device: str = "auto"
    size: int | None = None
    epochs: int | None = None
    limit: int | None = None  # smoke tests: a small class-balanced subset
    folds: int = N_FOLDS
    val_fold: int | None = None  # None: the fold most like the whole set (representative_fold)
    skip_cv: bool = False
    calib_images: int = 300
    calibration: str | None = None  # None: the preset's (a method name or "auto": search)
    requantize: bool = False  # forget the recorded INT8 recipe: quantize (search) again
    min_sensitivity: float = 0.95
    version: str | None = None  # None: the preset's
    seed: int = 0  #: TrainConfig.seed: 0 for the shipped runs, others to measure the spread
    #: more folders where the models named in ``Preset.compared_with`` may be (card table)
    compare_dirs: tuple[Path, ...] = ()


def private_tmp(path: Path) -> Path:
    """Where to write ``path`` before renaming it into place: a temporary name of this process's
    own. Under torchrun every rank may build the same missing cache at once; a shared
    temporary name would let one rank rename another's half-written file."""
    return path.with_name(f"{path.stem}.{os.getpid()}.tmp{path.suffix}")


def save_npy(path: Path, array: np.ndarray) -> None:
    """Write a cache file whole or not at all (:func:`private_tmp`, then a rename)."""
    tmp = private_tmp(path)
    np.save(tmp, array)
    tmp.replace(path)


def _recorded_val_fold(manifest: ModelManifest) -> int | None:
    """The fold a model folder's final model was validated on: ``training.final_model.
    val_fold``, or for folders written before it was recorded, the fold its CAM reference
    names ("... drawn from validation fold N ...")."""
    final = (manifest.training or {}).get("final_model", {})
    if final.get("val_fold") is not None:
        return int(final["val_fold"])
    found = re.search(r"validation fold (\d+)", (manifest.cam_reference or {}).get("rule", ""))
    return int(found.group(1)) if found else None


def _shipped(path: Path, sha256: object) -> Path:
    """``path``, refused unless its SHA-256 is the manifest's ``sha256``: a stage that measures
    or rebuilds a model folder must work on the files the folder ships."""
    if sha256_of(path) != sha256:
        raise ValueError(f"{path}: SHA-256 differs from the manifest's: not the shipped file")
    return path


def _json(obj) -> str:
    """``obj`` as strict, indented JSON (NumPy values as numbers, NaN as null)."""
    return json.dumps(plain_json(obj), indent=2)


class Pipeline:
    def __init__(self, preset: Preset, opts: PipelineOptions, log=print) -> None:
        self.p, self.o, self.log = preset, opts, log
        self.rt = setup_runtime(opts.device)
        self.work = opts.workdir
        self.work.mkdir(parents=True, exist_ok=True)
        self.out = opts.models_dir / preset.model_name
        self.state_path = self.work / "state.json"
        #: False for ``--stages cam`` and ``parity``: they measure a finished model folder and
        #: must not touch the state of a run that may share the work folder
        self.keep_state = True
        self.state: dict = (
            json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        )
        self.size, epochs = self._size_and_epochs()
        self.cfg = TrainConfig(
            arch=preset.arch,
            size=self.size,
            epochs=epochs,
            # from scratch, early epochs are noisy: no early stop in the first half of the budget
            min_epochs=int(epochs * preset.min_epochs_share),
            patience=max(4, epochs // 5),
            batch_size=preset.batch_size,
            lr=preset.lr,
            channels_last=preset.arch.startswith("efficientnet"),
            pretrained=preset.pretrained,
            schedule=preset.schedule,
            frozen_stages=preset.frozen_stages,
            balance=preset.balance,
            lung_attention=preset.lung_attention,
            seed=opts.seed,
        )
        self._features: np.ndarray | None = None
        self._lungs: np.ndarray | None = None
        self._teacher: tuple[Pipeline, ImageSet] | None = None
        self._views: np.ndarray | None = None

    # -- helpers ---------------------------------------------------------------------------
    def _size_and_epochs(self) -> tuple[int, int]:
        """The resolution and epoch budget: given, or the preset's for this device; but a
        final model already trained (``state.json`` ``trained_on``, e.g. on a lent GPU:
        docs/training.md) is finished with the size and epochs that trained it, so the card
        states them and the folds are predicted at its size. A different ``--size`` or
        ``--epochs`` for such a run is refused rather than silently mixed."""
        p, o = self.p, self.o
        cuda = self.rt.device.type == "cuda"
        size = o.size or (p.size_cuda if cuda else p.size_cpu)
        epochs = o.epochs or (p.epochs_cuda if cuda else p.epochs_cpu)
        trained = self.state.get("trained_on")
        if not trained or not (self.work / "final" / "done.json").exists():
            return size, epochs
        if o.seed != trained.get("seed", 0):
            raise ValueError(
                f"{self.work} holds a final model trained with seed {trained.get('seed', 0)}, "
                f"not {o.seed}: use another --workdir"
            )
        for name, given in (("size", o.size), ("epochs", o.epochs)):
            if given is not None and given != trained[name]:
                raise ValueError(
                    f"{self.work} holds a final model trained with {name} {trained[name]}, "
                    f"not {given}: use another --workdir, or leave --{name} out"
                )
        return int(trained["size"]), int(trained["epochs"])

    def _seed_tag(self) -> str:
        """Cache-name suffix of a run with another seed: its augmented views differ."""
        return f"_s{self.cfg.seed}" if self.cfg.seed else ""

    def save_state(self) -> None:
        if self.keep_state:
            self.state_path.write_text(_json(self.state))

    def cache_path(self) -> Path:
        """The decoded, preprocessed training images (uint8), computed once per size."""
        prep = self.p.preprocessing
        tag = "" if prep.is_identity else f"_{prep.crop}_{prep.intensity}"
        return self.work / f"images_{self.size}{tag}.npz"

    def data(self) -> ImageSet:
        prep = self.p.preprocessing
        cache = self.cache_path()
        manifest = self.o.data_root / self.p.data / "manifest.csv"
        if cache.exists():
            z = np.load(cache, allow_pickle=True)
            recs = read_manifest(manifest)
            keep = z["keep"].tolist()
            recs = [recs[i] for i in keep]
            return ImageSet(z["images"], z["labels"], recs, [str(c) for c in z["classes"]])
        t0 = time.time()
        ds = load_imageset(manifest, self.size, limit=self.o.limit, prep=prep)
        row = {str(r.path): i for i, r in enumerate(read_manifest(manifest))}
        keep = np.array([row[str(r.path)] for r in ds.records])
        save_image_cache(cache, ds.images, ds.labels, ds.classes, keep)
        self.log(f"decoded {len(ds.labels)} images at {self.size}px in {time.time() - t0:.0f}s")
        return ds

    def val_fold(self, ds: ImageSet) -> int:
        """The final model's validation fold (early stopping and operating threshold).

        Unless given, the fold whose mix of (source, label) is closest (total variation) to the
        whole set's: folds are balanced per label but not per source, and a fold that holds most
        of one source's negatives (fold 0 of the CT set holds 180 of ct-512's 254) would choose
        a threshold for a distribution the app will not see.
        """
        if self.o.val_fold is not None:
            return self.o.val_fold
        keys = [f"{r.source}|{r.label}" for r in ds.records]
        uniq = sorted(set(keys))
        folds = np.array([r.fold for r in ds.records])
        arr = np.array(keys)
        whole = np.array([np.mean(arr == k) for k in uniq])
        tv = [
            0.5 * np.abs(np.array([np.mean(arr[folds == f] == k) for k in uniq]) - whole).sum()
            for f in range(self.o.folds)
        ]
        return int(np.argmin(tv))

    def final_train_folds(self, val_fold: int) -> list[int]:
        """The final model's training folds: all but its validation fold (:meth:`val_fold`)."""
        return [f for f in range(self.o.folds) if f != val_fold]

    def cv_val_fold(self, k: int) -> int:
        """Fold ``k``'s validation fold (early stopping, per-fold threshold): the next one."""
        return (k + 1) % self.o.folds

    def cv_train_folds(self, k: int) -> list[int]:
        """Fold ``k``'s training folds: all but its test fold ``k`` and its validation fold."""
        return [f for f in range(self.o.folds) if f not in (k, self.cv_val_fold(k))]

    def train_indices(self, ds: ImageSet, folds: list[int]) -> np.ndarray:
        """Images of ``folds`` used for training (the preset's excluded sources left out)."""
        idx = ds.folds(folds)
        if not self.p.train_exclude_sources:
            return idx
        excluded = np.isin(ds.sources[idx], list(self.p.train_exclude_sources))
        return idx[~excluded]

    def teacher_pipeline(self, ds: ImageSet) -> tuple[Pipeline, ImageSet]:
        """The pipeline and data of the preset whose views (and models) teach this one."""
        if self._teacher is None:
            from lunglens.training.presets import PRESETS

            assert self.p.views_from is not None
            tp = PRESETS[self.p.views_from]
            # the teacher's own run (seed 0): a student repeated with another seed learns from
            # the same teacher views, so only its own training varies
            opts = replace(
                self.o, workdir=default_workdir(tp.model_name), size=None, epochs=None, seed=0
            )
            tpipe = Pipeline(tp, opts, self.log)
            tds = tpipe.data()
            if [r.path for r in tds.records] != [r.path for r in ds.records]:
                raise RuntimeError("teacher and student data sets differ")
            self._teacher = (tpipe, tds)
        return self._teacher

    def teacher_views(self, ds: ImageSet) -> np.ndarray:
        """The teacher's augmented views at this preset's size, cached on disk and built once
        for every run."""
        if self._views is None:
            from lunglens.training.train import view_images

            tpipe, tds = self.teacher_pipeline(ds)
            path = self.work / f"views_{self.size}_from_{tpipe.p.name}.npy"
            if not path.exists():
                views = view_images(tds, tpipe.cfg, self.rt, self.size)
                save_npy(path, views)
                self.log(f"cached {tpipe.cfg.feature_views} views per image from {tpipe.p.name}")
            self._views = np.load(path)
        return self._views

    def run_inputs(self, ds: ImageSet, run: str, train_idx: np.ndarray) -> dict:
        """Extra inputs of one run: cached features, or cached views and the teacher's soft
        targets on them (distillation with the same augmented view for teacher and student)."""
        if self.p.views_from is None:
            own: dict = dict(features=self.features(ds))
            if self.cfg.lung_attention > 0:
                own["lungs"] = self.lung_cells(ds)
            return own
        out: dict = dict(views=self.teacher_views(ds))
        if self.p.teacher:
            out["soft_targets"] = self.teacher_logits(ds, run, train_idx)
        if self.cfg.lung_attention > 0:
            out["lungs"] = self.lung_cells(ds)
        return out

    def teacher_logits(self, ds: ImageSet, run: str, train_idx: np.ndarray) -> np.ndarray:
        """The teacher's logits ``[V, N, C]`` on the cached views of ``run``'s training images
        (NaN elsewhere), from the teacher's checkpoint of the same run.

        Kept in the work folder (``teacher_<run>.npz``: the logits, the images they cover, the
        checkpoint's SHA-256), so that the run can train where the teacher's checkpoints and
        frozen features are not: on a lent GPU machine (docs/training.md). A kept file is used
        when it covers these images and, where the checkpoint is present, was made from it.
        """
        tpipe, tds = self.teacher_pipeline(ds)
        path = self.work / f"teacher_{run}.npz"
        ckpt = tpipe.work / run / "best.pt"
        sha = sha256_of(ckpt) if ckpt.exists() else None
        if path.exists():
            z = np.load(path)
            if np.array_equal(z["idx"], train_idx) and sha in (None, str(z["teacher_sha256"])):
                views, _, classes = z["logits"].shape
                out = np.full((views, len(ds.labels), classes), np.nan, np.float32)
                out[:, train_idx] = z["logits"]
                return out
            if sha is None:
                raise ValueError(f"{path} was made for other training images than run {run}'s")
        if sha is None:
            raise FileNotFoundError(
                f"teacher checkpoint {ckpt} is missing: run 'lunglens-train {tpipe.p.name}' "
                "first (its CV folds are the teachers)"
            )
        from lunglens.training.train import cached_teacher_logits

        teacher = load_best(tpipe.work / run, tpipe.p.arch, len(ds.classes))
        feats = tpipe.features(tds)
        assert feats is not None
        logits = cached_teacher_logits(teacher, tpipe.cfg.frozen_stages, feats, train_idx)
        tmp = private_tmp(path)
        np.savez(tmp, logits=logits[:, train_idx], idx=train_idx, teacher_sha256=sha)
        tmp.replace(path)
        return logits

    def stage_teacher(self, ds: ImageSet) -> None:
        """What a run on a teacher's views needs from the teacher's work folder and the scans,
        kept in the work folder before the run trains on a lent GPU (``--stages teacher``):
        the teacher's logits of every run (final model and CV folds) for a distilled preset,
        and the views' lung cells for a preset with the lung-attention penalty."""
        if not self.p.keeps_teacher_inputs:
            raise ValueError(f"{self.p.name} needs no teacher logits and no lung cells")
        if self.p.size_cpu != self.p.size_cuda and self.o.size is None:
            raise ValueError(
                f"{self.p.name} trains at {self.p.size_cpu} px here and {self.p.size_cuda} px on "
                "CUDA: give --size for the machine the run will train on"
            )
        if self.cfg.lung_attention > 0:
            self.lung_cells(ds)
        if not self.p.teacher:
            return
        runs = {"final": self.train_indices(ds, self.final_train_folds(self.val_fold(ds)))}
        if not self.o.skip_cv:
            for k in range(self.o.folds):
                runs[f"fold{k}"] = self.train_indices(ds, self.cv_train_folds(k))
        for run, idx in runs.items():
            self.teacher_logits(ds, run, idx)
            self.log(f"teacher logits of {run}: {len(idx)} images")

    def features(self, ds: ImageSet) -> np.ndarray | None:
        """The frozen stages' outputs (computed once, cached on disk), if the preset freezes."""
        if not self.cfg.frozen_stages:
            return None
        if self._features is None:
            from lunglens.training.train import frozen_features

            path = self.work / (
                f"features_{self.size}_k{self.cfg.frozen_stages}_v{self.cfg.feature_views}"
                f"{self._seed_tag()}.npy"
            )
            if not path.exists():
                save_npy(path, frozen_features(ds, self.cfg, self.rt, self.log))
            self._features = np.load(path)
        return self._features

    def cam_grid(self, ds: ImageSet) -> int:
        """The side of the CAM layer's maps for this preset's cached inputs."""
        import torch

        from lunglens.training.models import create_model
        from lunglens.training.train import SplitModel

        model = create_model(self.p.arch, len(ds.classes)).eval()
        with torch.no_grad():
            if self.p.views_from is not None:
                return int(model.features(torch.zeros(1, 1, self.size, self.size)).shape[-1])  # type: ignore[operator]
            feats = self.features(ds)
            assert feats is not None
            first = torch.from_numpy(feats[0, :1].astype(np.float32))
            return int(SplitModel(model, self.cfg.frozen_stages).head_maps(first).shape[-1])

    def lung_cells(self, ds: ImageSet) -> np.ndarray:
        """Lung share of every CAM cell of every cached view (training.attention), cached.

        The cached views are this preset's frozen features, or a teacher's augmented views
        (``views_from``): then the fields are moved with the teacher's augmentation, the one
        that made the views, and pooled to this network's CAM grid.
        """
        if self._lungs is None:
            from lunglens.training.attention import lung_cells

            src, src_ds = (self, ds) if self.p.views_from is None else self.teacher_pipeline(ds)
            grid = self.cam_grid(ds)
            field_of = LUNG_FIELDS[self.p.modality].find
            views = src.cfg.feature_views
            # a teacher's views: the cells belong to that teacher's augmentation and size
            whose = "" if src is self else f"_from_{src.p.name}_{src.size}"
            name = (
                f"lungs_{field_of.__name__}_{self.size}_g{grid}_v{views}{whose}"
                f"{src._seed_tag()}.npy"
            )
            path = self.work / name
            if not path.exists():
                from lunglens.training.data import load_lung_fields

                fields = load_lung_fields(
                    src_ds.records, src.size, prep=src.p.preprocessing, field_of=field_of
                )
                cells = lung_cells(src_ds, fields, src.cfg, self.rt, grid)
                save_npy(path, cells)
                usable = int(np.isfinite(cells[0, :, 0, 0]).sum())
                self.log(f"lung fields: {usable}/{len(ds.labels)} usable, {grid}x{grid} cells")
            cells = np.load(path)
            if cells.shape != (views, len(ds.labels), grid, grid):
                raise ValueError(
                    f"{path} holds lung cells of shape {cells.shape}, not "
                    f"{(views, len(ds.labels), grid, grid)}: made for other images; delete it"
                )
            self._lungs = cells
        return self._lungs

    def positive(self, ds: ImageSet) -> int:
        return ds.classes.index(self.p.positive_label)

    # -- stages ----------------------------------------------------------------------------
    def run(self, stages: str = "all") -> dict:
        """The stages of ``lunglens-train --stages``: ``all``; ``train``, the final model and
        the CV folds' training and test predictions only (a lent GPU machine: export, INT8,
        operating point and card follow on a later run, where the INT8 recipe search is
        measured on the CPU the app runs on); ``teacher``, the teacher logits and lung cells of
        a preset trained on a teacher's views only (:meth:`stage_teacher`, before its training
        travels)."""
        if stages not in STAGES:
            raise ValueError(f"stages {stages!r}: expected one of {STAGES}")
        ds = self.data()
        self.log(
            f"{self.p.name}: {len(ds.labels)} images, classes {ds.classes}, size {self.size}, "
            f"device {self.rt.describe()}"
        )
        if stages == "teacher":
            self.stage_teacher(ds)
            return self.state
        of_shipped = {
            "cam": self.stage_cam_of_shipped,
            "parity": self.stage_parity_of_shipped,
            "quantize": self.stage_quantize_of_shipped,
        }
        if stages in of_shipped:  # a model folder measured again: no run state is written
            self.keep_state = False
            of_shipped[stages](ds)
            return self.state
        self.stage_final(ds)
        if not self.rt.is_main:
            return {}
        if stages == "train":
            if not self.o.skip_cv:
                self.stage_cv(ds)
            return self.state
        self.stage_export(ds)
        if self.o.requantize:
            self.state.pop("quantization", None)
        self.stage_quantize(ds)
        self.write_model_dir(ds)
        if not self.o.skip_cv:
            self.stage_cv(ds)
            self.stage_operating_point(ds)
            self.stage_quantize(ds, at_operating_point=True)
            self.write_model_dir(ds)
            self.stage_cam_check(ds)
            self.stage_cam_reference(ds)
            self.write_model_dir(ds)
        return self.state

    def stage_final(self, ds: ImageSet) -> None:
        v = self.val_fold(ds)
        self.state["val_fold"] = v
        train_idx = self.train_indices(ds, self.final_train_folds(v))
        val_idx = ds.folds([v])
        run = self.work / "final"
        fresh = not (run / "done.json").exists()
        extra = self.run_inputs(ds, "final", train_idx) if fresh else {}
        facts = train_run(ds, train_idx, val_idx, self.cfg, self.rt, run, self.log, **extra)
        self.state["final"] = {k: v for k, v in facts.items() if k != "history"}
        if fresh:  # what trained it: a run finished elsewhere keeps the facts it came with
            from lunglens.training.transport import describe

            self.state["trained_on"] = dict(
                device=self.rt.describe(),
                epochs=self.cfg.epochs,
                size=self.size,
                seed=self.cfg.seed,
                images=describe(self.cache_path()),
            )
        self.save_state()

    def stage_export(self, ds: ImageSet) -> None:
        from lunglens.training.export import export_onnx

        fp32 = self.work / "model_fp32.onnx"
        if "export" in self.state and fp32.exists():
            return
        model = load_best(self.work / "final", self.p.arch, len(ds.classes))
        self.state["export"] = export_onnx(model, self.size, fp32)
        self.log(
            f"exported ONNX; max |probs(torch) - probs(onnx)| = "
            f"{self.state['export']['probs_max_abs_diff']:.2e}"
        )
        self.save_state()

    def quantization_images(self, ds: ImageSet) -> tuple[np.ndarray, np.ndarray]:
        """Calibration images (``calib_images`` images, a fixed draw from every fold but the
        validation fold, sources left out of training included) and the validation fold's
        indices, on which INT8 is scored against float."""
        v = self.val_fold(ds)
        train_idx = ds.folds(self.final_train_folds(v))
        rng = np.random.default_rng(0)
        calib = train_idx[rng.permutation(len(train_idx))[: self.o.calib_images]]
        return ds.images[calib], ds.folds([v])

    def stage_quantize(self, ds: ImageSet, at_operating_point: bool = False) -> None:
        """INT8 file, recipe and parity on the validation fold.

        Run twice: right after export, at the validation fold's own threshold (so a model
        exists before the CV ends); then, once the pooled out-of-fold operating point is
        known, again at that shipped threshold (``at_operating_point``), since the decisions
        that ship are made there and a recipe chosen elsewhere can flip more of them (CT 1.1.0:
        99.6% agreement at its own 0.107, 98.8% at the shipped 0.0945). A search on a model
        whose operating point is already known (``--requantize``) runs once, at that threshold.
        """
        from lunglens.training.metrics import choose_threshold
        from lunglens.training.quantize import (
            QAT_CANDIDATE,
            QUANT_CANDIDATES,
            QuantCandidate,
            Validation,
            onnx_probs,
            quantize_and_score,
            search_quantization,
        )

        int8 = self.work / "model_int8.onnx"
        done = self.state.get("quantization", {})
        op = self.state.get("operating_point")
        method = self.o.calibration or self.p.calibration
        if at_operating_point:
            # A fixed recipe gives the same file at any threshold: its parity at the shipped one
            # is `shipped_parity`. A searched one is chosen again unless it already was, there.
            if not op or method != "auto" or done.get("threshold") == op["threshold"]:
                return
        elif done and int8.exists():
            return
        # the searched recipe is chosen at the shipped threshold wherever that is known
        at_operating_point = at_operating_point or bool(op and method == "auto")
        calib, val_idx = self.quantization_images(ds)
        pos = self.positive(ds)
        y = ds.labels[val_idx]
        fp32 = self.work / "model_fp32.onnx"

        def threshold(y_pos: np.ndarray, p_pos: np.ndarray) -> float:
            if at_operating_point and op:
                return float(op["threshold"])
            return choose_threshold(y_pos, p_pos, self.o.min_sensitivity)

        if method == "auto":
            qat = self.p.qat_epochs > 0
            q, p32, p8, thr = search_quantization(
                fp32,
                int8,
                calib,
                ds.images[val_idx],
                y,
                pos,
                threshold,
                candidates=(*QUANT_CANDIDATES, QAT_CANDIDATE) if qat else QUANT_CANDIDATES,
                qat_fp32=(lambda n: self.qat_model(ds, calib, n)) if qat else None,
            )
            for t in q["trials"]:
                self.log(f"quantization trial {t}")
            if qat:  # how the fine-tuned copy was made, chosen or not (the card says which)
                q["qat"] = self.state["qat"]
        else:
            p32 = onnx_probs(fp32, ds.images[val_idx])
            val = Validation(ds.images[val_idx], y, pos, p32, threshold)
            q, p8, thr = quantize_and_score(fp32, int8, calib, val, QuantCandidate(method))
        q["threshold_basis"] = "shipped" if at_operating_point else "validation fold"
        q["threshold"] = thr  # the threshold the recipe was chosen and scored at
        self.state["quantization"] = q
        if not at_operating_point:
            self.state["threshold"] = thr
        for key in ("cam_in_lungs", "cam_reference"):  # measured on the INT8 file: again
            self.state.pop(key, None)
        np.savez(self.work / "final_val_probs.npz", fp32=p32, int8=p8, labels=y)
        self.log(
            f"INT8: agreement {q['parity_validation_fold']['agreement']:.4f}, accuracy change "
            f"{q['parity_validation_fold']['accuracy_change_points']:+.2f} points, "
            f"threshold {thr:.3f}"
        )
        self.save_state()

    def qat_model(
        self, ds: ImageSet, calib: np.ndarray, float_convs: int, source: Path | None = None
    ) -> Path:
        """The final model fine-tuned with INT8 simulated (:mod:`lunglens.training.qat`),
        exported as ``model_qat_fp32.onnx``: what a ``qat`` quantization candidate is made from.

        Made once per recipe (``state["qat"]`` records it; a new model's search runs twice, at
        the validation fold's threshold and at the shipped one). Its images are the final model's
        training folds, never the validation fold the INT8 file is scored on: at most
        ``Preset.qat_images`` of them, a fixed draw. The model is the work folder's checkpoint,
        or with ``source`` a float ONNX file's network (:func:`~lunglens.training.qat.
        float_model_from_onnx`: a shipped folder searched again without its work folder).
        """
        from lunglens.training.export import export_onnx
        from lunglens.training.qat import fine_tune, float_model_from_onnx
        from lunglens.training.quantize import WEIGHT_MAX
        from lunglens.training.train import load_best

        origin = sha256_of(source) if source else "checkpoint"
        # a shipped folder's copy has a name of its own: never taken for the run's (whose work
        # folder this may be), nor the other way round
        name = "model_qat_fp32.onnx" if source is None else f"model_qat_fp32_{origin[:12]}.onnx"
        path = self.work / name
        # a copy tuned for another weight range (full int8, before 7-bit weights), or from
        # another float model, is made again
        recipe = dict(
            epochs=self.p.qat_epochs,
            float_convs=float_convs,
            weight_max=WEIGHT_MAX,
            source=origin,
        )
        done = self.state.get("qat")
        if done and path.exists() and all(done.get(k) == v for k, v in recipe.items()):
            return path
        v = self.val_fold(ds)
        pool = ds.folds(self.final_train_folds(v))
        pool = np.sort(np.random.default_rng(1).permutation(pool)[: self.p.qat_images])
        if source is not None:
            model = float_model_from_onnx(source, self.p.arch, len(ds.classes))
        else:
            model = load_best(self.work / "final", self.p.arch, len(ds.classes))
        tuned, report = fine_tune(
            model,
            ds.images[pool],
            calib,
            epochs=self.p.qat_epochs,
            float_convs=float_convs,
            log=self.log,
        )
        staged = private_tmp(path)  # whole or not at all: the export checks after writing
        try:
            export_onnx(tuned, self.size, staged)
            staged.replace(path)
        finally:
            staged.unlink(missing_ok=True)
        self.state["qat"] = report | {"source": origin}
        self.save_state()
        return path

    def shipped_parity(self, ds: ImageSet) -> dict:
        """INT8 vs float on the validation fold at the shipped threshold, once the pooled
        operating point exists (a fixed recipe is scored at the validation fold's own threshold;
        a searched one is chosen again at the shipped one, where this repeats its parity):
        ``{"parity_shipped_threshold": ...}``, or ``{}``."""
        probs = self.work / "final_val_probs.npz"
        if not self.state.get("operating_point") or not probs.exists():
            return {}
        from lunglens.training.quantize import parity

        z = np.load(probs)
        thr = self.shipped_threshold()
        par = parity(z["fp32"], z["int8"], z["labels"], self.positive(ds), thr)
        return {"parity_shipped_threshold": {**par, "threshold": thr}}

    def stage_cv(self, ds: ImageSet) -> None:
        from lunglens.training.metrics import choose_threshold

        pos = self.positive(ds)
        for k in range(self.o.folds):
            key = f"fold{k}"
            if key in self.state.get("cv", {}):
                continue
            vf = self.cv_val_fold(k)
            tr = self.train_indices(ds, self.cv_train_folds(k))
            va, te = ds.folds([vf]), ds.folds([k])
            extra = (
                self.run_inputs(ds, key, tr) if not (self.work / key / "done.json").exists() else {}
            )
            facts = train_run(ds, tr, va, self.cfg, self.rt, self.work / key, self.log, **extra)
            model = load_best(self.work / key, self.p.arch, len(ds.classes)).to(self.rt.device)
            pv = predict_probs(model, ds.images[va], self.rt)
            pt = predict_probs(model, ds.images[te], self.rt)
            thr = choose_threshold(
                (ds.labels[va] == pos).astype(int), pv[:, pos], self.o.min_sensitivity
            )
            np.savez(self.work / f"{key}_test.npz", probs=pt, idx=te, threshold=thr)
            self.state.setdefault("cv", {})[key] = dict(
                test_fold=k,
                val_fold=vf,
                threshold=thr,
                n_train=len(tr),
                n_val=len(va),
                n_test=len(te),
                best_epoch=facts["best_epoch"],
                seconds=facts["seconds"],
            )
            self.save_state()

    # -- outputs ---------------------------------------------------------------------------
    def series_metrics(
        self,
        y: np.ndarray,
        probs: np.ndarray,
        groups: np.ndarray,
        sources: np.ndarray,
        classes: list[str],
        threshold: float,
    ) -> dict:
        """Per-patient metrics with the app's series rule, overall and per source."""
        from lunglens.training.metrics import group_report

        pos = classes.index(self.p.positive_label)
        series = group_report(y, probs, groups, classes, pos, threshold, SERIES_METHOD, SERIES_K)
        per_source = {}
        for s in sorted(set(sources.tolist())):
            sel = sources == s
            r = group_report(
                y[sel], probs[sel], groups[sel], classes, pos, threshold, SERIES_METHOD, SERIES_K
            )
            m = r["report"]["per_class"][self.p.positive_label]
            per_source[s] = dict(
                groups=r["groups"],
                accuracy=r["report"]["accuracy"],
                sensitivity=m["sensitivity"],
                specificity=m["specificity"],
                auc=m["auc"],
            )
        series["per_source"] = per_source
        return series

    def oof(self, ds: ImageSet) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]] | None:
        """Pooled out-of-fold ``(idx, probs)`` and each fold's test indices, once CV is done."""
        if len(self.state.get("cv", {})) < self.o.folds:
            return None
        parts = [np.load(self.work / f"fold{k}_test.npz") for k in range(self.o.folds)]
        idx = np.concatenate([z["idx"] for z in parts])
        probs = np.concatenate([z["probs"] for z in parts])
        return idx, probs, [z["idx"] for z in parts]

    def shipped_threshold(self) -> float:
        """The operating threshold: from pooled out-of-fold predictions once the CV is done,
        before that the validation fold's (provisional)."""
        op = self.state.get("operating_point")
        return float(op["threshold"] if op else self.state["threshold"])

    def stage_operating_point(self, ds: ImageSet) -> None:
        """Threshold from all folds: the largest threshold whose sensitivity on the pooled
        out-of-fold predictions is >= ``min_sensitivity``; its spread over the folds; the same
        rule for the CT series aggregation on patient groups."""
        from lunglens.training.metrics import binary_metrics, choose_threshold, group_scores

        got = self.oof(ds)
        if got is None:
            return
        idx, probs, fold_idx = got
        pos = self.positive(ds)
        y = (ds.labels[idx] == pos).astype(int)
        p = probs[:, pos]
        thr = choose_threshold(y, p, self.o.min_sensitivity)
        at = binary_metrics(y, (p >= thr).astype(int), p)
        # the pooled arrays are the folds' test predictions concatenated in fold order
        bounds = np.cumsum([len(te) for te in fold_idx])[:-1]
        fold_thr = [
            choose_threshold(yf, pf, self.o.min_sensitivity)
            for yf, pf in zip(np.split(y, bounds), np.split(p, bounds), strict=True)
        ]
        op = dict(
            threshold=thr,
            rule=(
                f"largest threshold with sensitivity >= {self.o.min_sensitivity} for "
                f"'{self.p.positive_label}' on the pooled out-of-fold predictions of the "
                f"{self.o.folds}-fold CV ({len(idx)} images); flagged when P >= threshold"
            ),
            sensitivity=at["sensitivity"],
            specificity=at["specificity"],
            fold_thresholds=fold_thr,
            fold_threshold_spread=dict(
                min=float(np.min(fold_thr)),
                median=float(np.median(fold_thr)),
                max=float(np.max(fold_thr)),
                sd=float(np.std(fold_thr, ddof=1)),
            ),
        )
        if self.p.modality == Modality.CT:
            labels, gprobs, _, _ = group_scores(
                ds.labels[idx], probs, ds.groups[idx], pos, SERIES_METHOD, SERIES_K
            )
            gy_arr, gp_arr = (labels == pos).astype(int), gprobs[:, pos]
            sthr = choose_threshold(gy_arr, gp_arr, self.o.min_sensitivity)
            sm = binary_metrics(gy_arr, (gp_arr >= sthr).astype(int), gp_arr)
            op["series"] = dict(
                threshold=sthr,
                groups=len(gy_arr),
                sensitivity=sm["sensitivity"],
                specificity=sm["specificity"],
                auc=sm.get("auc"),
                rule=(
                    f"{SERIES_METHOD} (k={SERIES_K}) of each patient group's out-of-fold slice "
                    f"probabilities; largest threshold with patient sensitivity >= "
                    f"{self.o.min_sensitivity}"
                ),
            )
        self.state["operating_point"] = op
        self.log(
            f"operating point: threshold {thr:.4f} (folds {min(fold_thr):.3f}-{max(fold_thr):.3f}),"
            f" sensitivity {at['sensitivity']:.3f}, specificity {at['specificity']:.3f}"
        )
        self.save_state()

    def positive_validation_cams(self, ds: ImageSet, limit: int = 150):
        """``(index, image, raw CAM [C, h, w], P(positive))`` of up to ``limit`` positive
        images of the validation fold (a fixed draw), run through the shipped INT8 model as
        the app runs it (:func:`lunglens.inference.view.predict_image`, original size)."""
        from lunglens.inference.engine import Engine
        from lunglens.inference.view import predict_image
        from lunglens.io import load_scan
        from lunglens.models.registry import load_manifest

        engine = Engine(load_manifest(self.out))
        pos = self.positive(ds)
        val = [i for i in ds.folds([self.val_fold(ds)]) if ds.labels[i] == pos]
        rng = np.random.default_rng(0)
        for i in [val[k] for k in rng.permutation(len(val))[:limit]]:
            image = load_scan(ds.records[i].path).image[0]
            out = predict_image(engine, image, ("probs", "cam"))
            yield i, image, out["cam"][0], float(out["probs"][0][pos])

    def stage_cam_reference(self, ds: ImageSet, limit: int = 150) -> None:
        """The CAM scale of a scan that is not flagged (manifest ``cam_reference``): the median
        positive-class CAM peak (after ReLU) over the validation fold's positive images that
        the shipped INT8 model flags at the shipped threshold.

        A map scaled to its own maximum shows weak evidence in full colour; the app draws a
        not-flagged scan's map against this peak instead (:func:`lunglens.explain.display_floor`).
        """
        if not self.state.get("operating_point"):
            return
        thr = self.shipped_threshold()
        if self.state.get("cam_reference", {}).get("threshold") == thr:
            return  # measured at this threshold on this INT8 file (stage_quantize pops it)
        pos = self.positive(ds)
        peaks = [
            float(np.maximum(cam[pos], 0.0).max())
            for _, _, cam, p in self.positive_validation_cams(ds, limit)
            if p >= thr
        ]
        value = float(np.median(peaks)) if peaks else 0.0
        if not value > 0:  # no flagged positive, or no positive evidence: own maximum stays
            self.log("CAM reference: no flagged positive with evidence; none in the manifest")
            self.state["cam_reference"] = dict(values={}, threshold=thr)
            self.save_state()
            return
        self.state["cam_reference"] = dict(
            values={self.p.positive_label: value},
            threshold=thr,
            rule=(
                f"median positive-class CAM peak (after ReLU) of the {len(peaks)} flagged "
                f"'{self.p.positive_label}' images among {limit} drawn from validation fold "
                f"{self.val_fold(ds)} (shipped INT8 model, threshold {thr:.4f}); the app draws "
                "the map of a scan that is not flagged against this peak, not its own"
            ),
            flagged_peak_percentiles={
                str(q): float(v)
                for q, v in zip((10, 50, 90), np.percentile(peaks, [10, 50, 90]), strict=True)
            },
        )
        self.log(f"CAM reference peak: {value:.3f} ({len(peaks)} flagged positives)")
        self.save_state()

    def stage_cam_check(self, ds: ImageSet, limit: int = 150) -> None:
        """Share of CAM mass inside the lung field on COVID-positive validation images.

        Runs the shipped INT8 model the way the app does (:func:`lunglens.inference.view`),
        on the validation fold's positive images at their original size, and measures the
        positive class's CAM (ReLU, resized to the image) inside the modality's lung field
        (:data:`LUNG_FIELDS`). For CT, the share inside the dark, aerated lung
        (:func:`lunglens.preprocess.lung_mask`) is reported beside it.
        """
        if "cam_in_lungs" in self.state:
            return
        from lunglens.explain.cam import cam_map
        from lunglens.preprocess import lung_mask

        rule = LUNG_FIELDS[self.p.modality]
        field_of = rule.find
        pos = self.positive(ds)
        shares: list[float] = []
        dark: list[float] = []
        per_source: dict[str, list[float]] = {}
        for i, image, cam, _ in self.positive_validation_cams(ds, limit):
            heat = cam_map(cam, pos, image.shape)
            field = field_of(image)
            total = float(heat.sum())
            if total <= 0 or field.sum() == 0:
                continue
            share = float(heat[field].sum() / total)
            shares.append(share)
            if self.p.modality == Modality.CT:
                dark.append(float(heat[lung_mask(image)].sum() / total))
            per_source.setdefault(ds.records[i].source, []).append(share)
        self.state["cam_in_lungs"] = dict(
            images=len(shares),
            mean=float(np.mean(shares)) if shares else float("nan"),
            median=float(np.median(shares)) if shares else float("nan"),
            per_source={k: float(np.mean(v)) for k, v in sorted(per_source.items())},
            **({"aerated_mean": float(np.mean(dark))} if dark else {}),
            method=(
                f"{len(shares)} COVID-positive images of validation fold {self.val_fold(ds)}, "
                "shipped INT8 model, positive-class CAM after ReLU resized to the image; share "
                f"of its mass inside {field_of.__module__}.{field_of.__name__} "
                f"({rule.words})"
            ),
        )
        self.log(f"CAM mass inside the lungs: mean {self.state['cam_in_lungs']['mean']:.3f}")
        self.save_state()

    def stage_cam_of_shipped(self, ds: ImageSet) -> None:
        """``--stages cam``: measure :meth:`stage_cam_check` again on the model folder as it
        is (a new lung-field rule, or a folder whose work folder is gone) and write the result
        into its manifest and card; nothing is trained, exported or quantized.

        The validation fold is the one the final model was chosen on (:meth:`val_fold`): it
        must be the fold the manifest records (:func:`_recorded_val_fold`) with as many
        images, so a folder made with other options is refused rather than measured on images
        it trained on. The result is not saved in the work folder's state.
        """
        manifest, v = self._shipped_manifest(ds)
        self.state.pop("cam_in_lungs", None)
        self.stage_cam_check(ds)
        final = dict((manifest.training or {}).get("final_model", {}))
        training = dict(manifest.training or {}, final_model=final | {"val_fold": v})
        manifest = replace(manifest, cam_in_lungs=self.state["cam_in_lungs"], training=training)
        self._rewrite_shipped(manifest, "the CAM check")

    def stage_parity_of_shipped(self, ds: ImageSet) -> None:
        """``--stages parity``: score the model folder's INT8 file against its float file
        again, on the validation fold at the shipped threshold, in sessions opened as the app
        opens them (``engine.open_session``), and write the parity into its manifest and card;
        nothing is trained, exported or quantized, and the recorded search trials stay as they
        were measured.

        What a runtime change needs: the parity a card states is what the app computes only
        for the onnxruntime and session settings it was measured with (onnxruntime's
        ``WeightBiasQuantization`` ran the SqueezeNets' last float Conv in INT8 until the
        app's sessions turned it off). The files must be the ones the manifest names (SHA-256).
        """
        from lunglens.training.quantize import onnx_probs, parity

        manifest, v = self._shipped_manifest(ds)
        q = dict(manifest.quantization or {})
        if not q:
            raise FileNotFoundError(f"{self.out}: no INT8 and float pair to compare")
        fp32 = self._shipped_float(manifest)
        int8 = _shipped(self.out / manifest.file, manifest.sha256)
        val_idx = ds.folds([v])
        labels, pos = ds.labels[val_idx], self.positive(ds)
        p32, p8 = onnx_probs(fp32, ds.images[val_idx]), onnx_probs(int8, ds.images[val_idx])
        # the thresholds the search and the first parity used, unrounded: the recipe's (the
        # card's main parity line) and the pooled operating point's
        op = manifest.operating_point or {}
        recipe_thr = float(q["threshold"])
        shipped_thr = float(op.get("threshold", manifest.threshold or recipe_thr))
        q["parity_validation_fold"] = parity(p32, p8, labels, pos, recipe_thr)
        par = parity(p32, p8, labels, pos, shipped_thr)
        q["parity_shipped_threshold"] = {**par, "threshold": shipped_thr}
        q["parity_measured_again"] = self._measured_with("parity", v)
        self.log(
            f"INT8 vs float, validation fold {v} ({len(val_idx)} images) at {shipped_thr:.4f}: "
            f"agreement {par['agreement']:.4f}, max |dp| {par['max_abs_prob_diff']:.3f}"
        )
        self._rewrite_shipped(replace(manifest, quantization=q), "the INT8 parity")

    def stage_quantize_of_shipped(self, ds: ImageSet) -> None:
        """``--stages quantize``: search the INT8 recipe again from the model folder's float
        file (``reference_fp32``), at its pooled operating threshold on the recorded validation
        fold, and ship the chosen file as the preset's new version; the CAM check and CAM
        reference are measured again on it. Nothing is trained or exported, no work folder is
        needed, and the cross-validation, the operating point and the float file stay.

        What a runtime change that alters INT8 needs when the run's work folder is gone
        (``--requantize`` needs it): the search's trials were measured in the sessions of their
        day, and onnxruntime's ``WeightBiasQuantization`` ran a float Conv of the SqueezeNets in
        INT8 until the app's sessions turned it off. A new file is a new model version, so the
        preset's version (or ``--version``) must differ from the folder's. A preset with
        quantization-aware fine-tuning (``Preset.qat_epochs``) tries its candidate too, fine-tuned
        from the float file's own network (:func:`~lunglens.training.qat.float_model_from_onnx`),
        since the checkpoint is in the work folder that is gone.
        """
        from lunglens.training.quantize import (
            QAT_CANDIDATE,
            QUANT_CANDIDATES,
            parity,
            search_quantization,
        )

        manifest, v = self._shipped_manifest(ds)
        version = self.o.version or self.p.version
        if version == manifest.version:
            raise ValueError(
                f"{self.out}: version {version} is the folder's own; a new INT8 file is a new "
                "model version (raise the preset's version or give --version)"
            )
        fp32 = self._shipped_float(manifest)
        op = manifest.operating_point
        if not op:
            raise ValueError(f"{self.out}: no pooled operating point yet (run the preset first)")
        thr = float(op["threshold"])
        calib, val_idx = self.quantization_images(ds)
        labels, pos = ds.labels[val_idx], self.positive(ds)
        int8 = self.out / manifest.file
        staged = private_tmp(int8)  # the shipped file is replaced only once the search is done
        # the folder as it was, put back whole if anything fails after the search: a new INT8
        # file under the old manifest, or the old CAM numbers under the new file, would be
        # refused or wrong
        kept = {f: f.read_bytes() for f in self.out.iterdir() if f.is_file()}
        qat = self.p.qat_epochs > 0 and self._float_network_readable(fp32, len(ds.classes))
        try:
            q, p32, p8, _ = search_quantization(
                fp32,
                staged,
                calib,
                ds.images[val_idx],
                labels,
                pos,
                lambda y_pos, p_pos: thr,
                candidates=(*QUANT_CANDIDATES, QAT_CANDIDATE) if qat else QUANT_CANDIDATES,
                qat_fp32=(lambda n: self.qat_model(ds, calib, n, source=fp32)) if qat else None,
            )
            for t in q["trials"]:
                self.log(f"quantization trial {t}")
            if qat:
                q["qat"] = self.state["qat"]
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        q |= dict(
            threshold_basis="shipped",
            threshold=thr,
            parity_shipped_threshold={**parity(p32, p8, labels, pos, thr), "threshold": thr},
            searched_again=self._measured_with("quantize", v)
            | dict(from_version=manifest.version, qat_candidate=qat),
        )
        par = q["parity_validation_fold"]
        self.log(
            f"INT8 {version}: agreement {par['agreement']:.4f}, accuracy change "
            f"{par['accuracy_change_points']:+.2f} points at {thr:.4f}"
        )
        try:
            os.replace(staged, int8)
            manifest = replace(
                manifest,
                version=version,
                sha256=sha256_of(int8),
                quantization=q,
                cam_in_lungs=None,
                cam_reference=None,
            )
            self._rewrite_shipped(manifest, "the INT8 search")
            # the CAM stages run the folder's INT8 file as the app does: measured again on it
            self.state = dict(operating_point=op, val_fold=v)
            self.stage_cam_check(ds)
            self.stage_cam_reference(ds)
            cam_ref = self.state.get("cam_reference") or {}
            manifest = replace(
                manifest,
                cam_in_lungs=self.state["cam_in_lungs"],
                cam_reference=cam_ref if cam_ref.get("values") else None,
            )
            self._rewrite_shipped(manifest, "the CAM check and reference of the new INT8 file")
        except BaseException:
            staged.unlink(missing_ok=True)
            for f, data in kept.items():
                f.write_bytes(data)
            self.log(f"{self.out}: restored as it was (the new INT8 file was not shipped)")
            raise

    def _float_network_readable(self, fp32: Path, n_classes: int) -> bool:
        """Whether the quantization-aware candidate can start from ``fp32`` (checked before
        the search, so a file it cannot read skips that candidate, not the whole search)."""
        from lunglens.training.qat import float_model_from_onnx

        try:
            float_model_from_onnx(fp32, self.p.arch, n_classes)
        except ValueError as exc:
            self.log(f"no quantization-aware candidate: {exc}")
            return False
        return True

    def _measured_with(self, stage: str, val_fold: int) -> dict:
        """What a shipped-folder stage records of how it measured: the runtime, the graph
        transformers the app's sessions turn off, its command and the validation fold (a card's
        numbers hold only for the runtime and sessions they were measured with)."""
        import onnxruntime as ort

        from lunglens.inference.engine import DISABLED_OPTIMIZERS

        return dict(
            runtime=f"onnxruntime {ort.__version__}",
            disabled_optimizers=list(DISABLED_OPTIMIZERS),
            command=f"lunglens-train {self.p.name} --stages {stage}",
            val_fold=val_fold,
        )

    def _shipped_float(self, manifest: ModelManifest) -> Path:
        """The folder's float file (manifest ``reference_fp32``), the one its SHA-256 names."""
        ref = manifest.reference_fp32 or {}
        fp32 = self.out / str(ref.get("file", ""))
        if not ref.get("file") or not fp32.is_file():
            raise FileNotFoundError(f"{self.out}: no float file (reference_fp32)")
        return _shipped(fp32, ref.get("sha256"))

    def _shipped_manifest(self, ds: ImageSet) -> tuple[ModelManifest, int]:
        """The model folder's manifest and the validation fold its final model was chosen on,
        for a stage that measures a shipped folder again (``cam``, ``parity``, ``quantize``):
        that fold must
        be the one the manifest records (:func:`_recorded_val_fold`) with as many images, so a
        folder made with other options is refused rather than measured on images it trained
        on."""
        path = self.out / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no model to measure (run the preset first)")
        manifest = ModelManifest.read(path)
        final = dict((manifest.training or {}).get("final_model", {}))
        v = self.val_fold(ds)
        n_val = len(ds.folds([v]))
        recorded = _recorded_val_fold(manifest)
        if recorded != v or final.get("n_val", n_val) != n_val:
            raise ValueError(
                f"{path}: the final model was validated on fold {recorded} "
                f"({final.get('n_val')} images), this run's validation fold is {v} "
                f"({n_val} images): give --val-fold (and --limit) as when it was trained"
            )
        return manifest, v

    def _rewrite_shipped(self, manifest: ModelManifest, what: str) -> None:
        """Write a measured-again ``manifest`` and its card into the model folder."""
        from lunglens.training.card import write_card

        path = self.out / "manifest.json"
        path.write_text(manifest.to_json())
        metrics_path = self.out / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
        write_card(self.out, manifest, metrics, self.p)
        self.log(f"wrote {what} into {path} and its card")

    def cv_metrics(self, ds: ImageSet) -> dict | None:
        from lunglens.training.metrics import classification_report, summarize_folds

        cv = self.state.get("cv", {})
        if len(cv) < self.o.folds:
            return None
        pos = self.positive(ds)
        shipped = self.shipped_threshold()
        per_fold_own, per_fold_shipped = [], []
        all_idx, all_probs = [], []
        for k in range(self.o.folds):
            z = np.load(self.work / f"fold{k}_test.npz")
            y = ds.labels[z["idx"]]
            per_fold_own.append(
                classification_report(y, z["probs"], ds.classes, pos, float(z["threshold"]))
            )
            per_fold_shipped.append(classification_report(y, z["probs"], ds.classes, pos, shipped))
            all_idx.append(z["idx"])
            all_probs.append(z["probs"])
        idx, probs = np.concatenate(all_idx), np.concatenate(all_probs)
        y = ds.labels[idx]
        src = ds.sources[idx]
        per_source = {
            s: classification_report(y[src == s], probs[src == s], ds.classes, pos, shipped)
            for s in sorted(set(src))
        }
        for rep in per_source.values():
            rep.pop("confusion", None)
        np.savez(self.work / "oof.npz", idx=idx, probs=probs, labels=y)
        series = None
        # CT series are aggregated in the app: check that rule too
        if self.p.modality == Modality.CT:
            series = self.series_metrics(y, probs, ds.groups[idx], src, ds.classes, shipped)
        return dict(
            scheme=f"group-wise {self.o.folds}-fold CV on the manifest's `fold` column; "
            "test fold k, "
            "validation fold k+1 (early stopping, per-fold threshold), 3 folds train; PyTorch fp32",
            at_shipped_threshold=summarize_folds(per_fold_shipped, ds.classes),
            at_fold_threshold=summarize_folds(per_fold_own, ds.classes),
            folds_at_shipped_threshold=[
                {k: r[k] for k in ("n", "accuracy", "macro_f1", "confusion")}
                | {
                    "sensitivity": r["per_class"][self.p.positive_label]["sensitivity"],
                    "specificity": r["per_class"][self.p.positive_label]["specificity"],
                    "auc": r["per_class"][self.p.positive_label]["auc"],
                }
                for r in per_fold_shipped
            ],
            pooled_out_of_fold=classification_report(y, probs, ds.classes, pos, shipped),
            per_source=per_source,
            per_patient_series=series,
        )

    def write_model_dir(self, ds: ImageSet) -> None:
        from lunglens.training.card import comparison_snapshot, write_card, write_plots

        self.out.mkdir(parents=True, exist_ok=True)
        model_path = self.out / "model.onnx"
        shutil.copyfile(self.work / "model_int8.onnx", model_path)
        # The float graph INT8 was made from: the reference for benchmarks and parity checks.
        fp32_path = self.out / "model_fp32.onnx"
        shutil.copyfile(self.work / "model_fp32.onnx", fp32_path)
        metrics = self.cv_metrics(ds)
        if metrics is not None:
            path = self.out / "metrics.json"
            previous = json.loads(path.read_text()).get("compared") if path.is_file() else None
            metrics["compared"] = comparison_snapshot(
                self.out, self.p, self.p.positive_label, previous, self.o.compare_dirs
            )
            path.write_text(_json(metrics))
            write_plots(self.work, self.out, ds, self.positive(ds), self.shipped_threshold())
        manifest = keep_measured_again(self.out, self.manifest(ds, metrics, model_path, fp32_path))
        (self.out / "manifest.json").write_text(manifest.to_json())
        write_card(self.out, manifest, metrics, self.p)
        self.log(f"wrote {self.out}")

    def trained_elsewhere(self) -> dict:
        """Manifest ``training`` fields of a run trained on a lent GPU (docs/training.md):
        the lossy copy of the images it trained on, and that its folds were predicted here."""
        out = {}
        if images := self.state.get("trained_on", {}).get("images"):
            out["trained_on_images"] = images
        if "cv_gpu" in self.state:
            out["cv_predicted"] = (
                "each test fold predicted again on this machine, on the lossless images, "
                "with the fold checkpoints brought back (float16)"
            )
        return out

    def manifest(
        self, ds: ImageSet, metrics: dict | None, model_path: Path, fp32_path: Path
    ) -> ModelManifest:
        """The model's manifest from the run's state, its CV metrics and the files shipped."""
        from lunglens.training.export import input_contract

        ex = self.state["export"]
        counts = {str(c): int((ds.labels == i).sum()) for i, c in enumerate(ds.classes)}
        spec = get_spec(self.p.arch)
        op = self.state.get("operating_point")
        return ModelManifest(
            name=self.p.model_name,
            # a seed repeat is not the shipped model: its version says which seed (semver build)
            version=self.o.version
            or self.p.version + (f"+seed{self.o.seed}" if self.o.seed else ""),
            architecture=spec.description,
            arch=self.p.arch,
            modality=self.p.modality,
            labels=tuple(ds.classes),
            positive_label=self.p.positive_label,
            input=input_contract(self.size, self.p.window, self.p.preprocessing, spec.norm),
            default_for_modality=self.p.default_for_modality,
            outputs=dict(
                probs=dict(shape=["N", len(ds.classes)]),
                cam=dict(
                    shape=["N", *ex["shapes"]["cam"]],
                    layer="head",
                    method="CAM (classifier weights x last feature maps)",
                ),
                gallery=ex["gallery"],
            ),
            file="model.onnx",
            sha256=sha256_of(model_path),
            reference_fp32=dict(
                file=fp32_path.name,
                sha256=sha256_of(fp32_path),
                use="benchmarks and INT8 parity only; the app runs model.onnx",
            ),
            threshold=round(self.shipped_threshold(), 4),
            threshold_rule=(
                (
                    op["rule"]
                    if op
                    else f"provisional (CV pending): largest threshold with sensitivity >= "
                    f"{self.o.min_sensitivity} for '{self.p.positive_label}' on validation fold "
                    f"{self.val_fold(ds)} (INT8 model); flagged when P(positive) >= threshold"
                )
                + ("; otherwise the most probable other class" if len(ds.classes) > 2 else "")
            ),
            operating_point=op,
            series_aggregation=dict(
                method=SERIES_METHOD,
                k=SERIES_K,
                **(
                    dict(threshold=round(op["series"]["threshold"], 4), rule=op["series"]["rule"])
                    if op and "series" in op
                    else {}
                ),
            ),
            cam_in_lungs=self.state.get("cam_in_lungs"),
            cam_reference=(
                self.state["cam_reference"]
                if (self.state.get("cam_reference") or {}).get("values")
                else None
            ),
            quantization={**self.state["quantization"], **self.shipped_parity(ds)},
            export=dict(
                opset=ex["opset"],
                # a state.json without the key: no rewrites
                graph_rewrites=ex.get("graph_rewrites", []),
                probs_max_abs_diff_vs_pytorch=ex["probs_max_abs_diff"],
            ),
            metrics=(
                dict(cv=metrics) if metrics else dict(cv="pending: cross-validation not finished")
            ),
            training=dict(
                data=f"../shared/data/{self.p.data} ({len(ds.labels)} images: {counts})",
                preset=self.p.name,
                resolution=self.size,
                epochs_max=self.cfg.epochs,
                monitor=(
                    "macro one-vs-rest ROC AUC"
                    if self.cfg.monitor == "auc"
                    else "unweighted cross-entropy"
                ),
                final_model=self.state.get("final", {}) | {"val_fold": self.state["val_fold"]},
                config={k: v for k, v in asdict(self.cfg).items() if k != "augment"},
                augmentation=asdict(self.cfg.augment),
                device=self.state.get("trained_on", {}).get("device", self.rt.describe()),
                **self.trained_elsewhere(),
                host=platform.processor() or platform.machine(),
                pretrained=(
                    dict(
                        source=spec.weights.source,
                        licence=spec.weights.licence,
                        sha256=spec.weights.sha256,
                        use="training only; the app ships ONNX",
                    )
                    if self.p.pretrained and spec.weights
                    else False
                ),
                excluded_from_training=list(self.p.train_exclude_sources),
                **(
                    dict(
                        loss_weights="classes balanced within each source; single-class "
                        f"sources weighted {self.cfg.single_class_source_weight}"
                    )
                    if self.cfg.balance == "source"
                    else {}
                ),
                distilled_from=(
                    dict(
                        preset=self.p.teacher,
                        how=f"KL on temperature-{self.cfg.distill_temperature} soft targets "
                        f"(weight {self.cfg.distill_alpha}) + label loss; teacher logits cached "
                        f"per augmented view, the same views the student trains on; fold k's "
                        "student learns from fold k's teacher",
                    )
                    if self.p.teacher
                    else None
                ),
                views_from=self.p.views_from,
                checkpoint=str((self.work / "final" / "best.pt").resolve()),
                cv_seconds=sum(f["seconds"] for f in self.state.get("cv", {}).values()),
            ),
            intended_use=(
                "Triage aid for chest "
                + ("CT slices" if self.p.modality == Modality.CT else "X-rays")
                + ": ranks scans so a radiologist reviews likely COVID-19 first. Not a diagnosis; "
                "not validated on data from any hospital; research use."
            ),
            # written as null until measured (CV pending)
            keep_null=frozenset({"operating_point", "cam_in_lungs"}),
        )


#: What ``lunglens-train --stages`` may run (:meth:`Pipeline.run`).
STAGES = ("all", "train", "teacher", "cam", "parity", "quantize")


def default_workdir(name: str) -> Path:
    return Path(os.environ.get("LUNGLENS_RUNS", "runs")) / name
