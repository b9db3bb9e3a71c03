#!/usr/bin/env bash
# One prepared device check: install the wheels the GPU image lacks (carried in .whl/), then run
# the benchmarks at real scale. Usage on the device machine: bash bench/device_run.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 - <<'PY' || rm -f .whl/pyarrow-*.whl   # keep the image's pyarrow when it is new enough
import pyarrow, sys
sys.exit(0 if int(pyarrow.__version__.split(".")[0]) < 24 else 1)
PY
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
# The project itself, as users install it: attacks/, eval/ and study/ become robust_w2s.attacks, ...
# (no network there: the image's setuptools builds it).
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 bench/attack_overhead.py --batch 32 --steps 10 --repeats 5 2>&1 | tee ${OUT:-/tmp}/attack_overhead.log
python3 bench/align_step.py --device cuda --batch 64 --repeats 5 2>&1 | tee ${OUT:-/tmp}/align_step.log
python3 bench/zeroshot_head.py --device cuda --model ViT-L-14 2>&1 | tee ${OUT:-/tmp}/zeroshot_head.log
