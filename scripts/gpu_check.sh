#!/usr/bin/env bash
# Run the TensorRT GPU check from the repo root on a CUDA machine; JSON goes to stdout (and $OUT if set).
set -euo pipefail
cd "$(dirname "$0")/.."
export WAFERFLOW_PROGRESS=0 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
[ -f .venv/bin/activate ] && source .venv/bin/activate
python - <<'PY'
import importlib.util, sys
missing = [m for m in ("torch", "timm", "onnx", "onnxruntime", "tensorrt", "sklearn", "tqdm") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check: missing packages {missing}; install the GPU image (pip install .[gpu])")
PY
out_dir="${OUT:-gpu_check_out}"
mkdir -p "$out_dir"
python scripts/gpu_check.py --out "$out_dir/run" "$@" | tee "$out_dir/gpu_check.json"
