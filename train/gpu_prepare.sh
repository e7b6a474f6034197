#!/usr/bin/env bash
# Prepares what a lent GPU machine needs to run train/train_codec.py (see WORKSPACE.md, "On a lent
# GPU machine"): wheels of the pinned packages its image lacks (Python 3.12, x86-64) in .whl/,
# the training crops in runs/data_aerial/ and runs/data_natural/ and the converted LPIPS weights in runs/metrics-cache/ (each
# carried by the device tool; together well under its 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
pin() { grep -i "^$1==" requirements.txt | head -1; }
mkdir -p .whl runs/data_aerial runs/data_natural runs/metrics-cache
for pkg in constriction dm-pix tensorboardX; do
  spec=$(pin "$pkg"); spec=${spec:-$pkg}
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$spec"
done
# two folders, carried by two calls (78 MiB together; ignored folders stay while the machine is warm)
cp -ru ../shared/data/train/aerial/. runs/data_aerial/
cp -ru ../shared/data/train/natural/. runs/data_natural/
PCDC_CACHE_DIR=runs/metrics-cache .venv/bin/python -m pcdc_jax.metrics.weights >/dev/null
du -sh .whl runs/data_aerial runs/data_natural runs/metrics-cache
