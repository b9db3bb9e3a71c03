#!/usr/bin/env bash
# One prepared device check: install the wheels the GPU image lacks, if carried in .whl/ (a machine
# without internet: `pip download --only-binary=:all: -d .whl open_clip_torch torchattacks timm
# datasets safetensors` here, then carry .whl/), run the benchmarks at real scale and fill
# docs/hardware.md's device rows. On a machine with the package index, `pip install -e .` first and
# no .whl/ is needed. Usage on the device machine:
#   bash bench/device_run.sh        # writes $OUT/{attack_overhead,align_step}.log, $OUT/hardware.md
# About 6 minutes on an H200; copy $OUT/hardware.md over docs/hardware.md afterwards.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp}
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 - <<'PY' || rm -f .whl/pyarrow-*.whl   # keep the image's pyarrow when it is new enough
import pyarrow, sys
sys.exit(0 if int(pyarrow.__version__.split(".")[0]) < 24 else 1)
PY
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
# The project itself, as users install it: attacks/, eval/ and study/ become robust_w2s.attacks, ...
# (no network there: the image's setuptools builds it).
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 bench/attack_overhead.py --batch 32 --steps 10 --repeats 5 2>&1 | tee "$OUT/attack_overhead.log"
python3 bench/zeroshot_head.py --device cuda --model ViT-L-14 2>&1 | tee "$OUT/zeroshot_head.log"

# configs/paper/adv-w2s.yaml as `robust-w2s align` runs it (ViT-B-32 -> ViT-L-14, batch 128, m=10, n=2,
# bf16 attacks and update), then one change at a time: activation checkpointing, fp32 attacks, batch 64.
: > "$OUT/align_step.log"
for change in "" "train.grad_checkpointing=true" "attack.precision=fp32" "train.batch_size=64"; do
    python3 bench/align_step.py --device cuda --repeats 3 ${change:+--set "$change"} 2>&1 | tee -a "$OUT/align_step.log"
done

# docs/hardware.md with its device rows replaced by these measurements.
python3 - "$OUT" <<'PY'
import pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = [line.removeprefix("row=") for line in (out / "align_step.log").read_text().splitlines() if line.startswith("row=")]
start, end = "<!-- device rows: bench/device_run.sh -->", "<!-- end of device rows -->"
head, rest = pathlib.Path("docs/hardware.md").read_text().split(start)
tail = rest.split(end)[1]
(out / "hardware.md").write_text(head + start + "\n" + "\n".join(rows) + "\n" + end + tail)
print(f"hardware.md: {len(rows)} device rows")
PY
