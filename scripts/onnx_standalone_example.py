"""Classify wafer maps with model.int8.onnx using numpy + onnxruntime only (no waferflow needed).

Usage: python onnx_standalone_example.py MODEL.onnx MAPS.npz [--out predictions.json]

MAPS.npz holds either ``maps`` uint8 [N, H, W] or the variable-size triple ``maps_flat``/``shapes``/``offsets``;
values 0 = off-wafer, 1 = pass, 2 = fail. Everything preprocessing needs is read from the model's metadata.
"""

import argparse
import json
import platform
import sys

import numpy as np
import onnxruntime as ort


def resize_nearest(m, size):
    """Nearest-neighbour resize of a [H, W] map (sample at pixel centres), as waferflow does."""
    h, w = m.shape
    if (h, w) == (size, size):
        return m
    rows = np.minimum((np.arange(size) * h / size + h / (2 * size)).astype(np.int64), h - 1)
    cols = np.minimum((np.arange(size) * w / size + w / (2 * size)).astype(np.int64), w - 1)
    return m[rows[:, None], cols[None, :]]


def preprocess(maps, meta):
    """uint8 maps -> float32 [N, C, S, S]: resize, value/2, replicate to in_chans, (x - mean) / std."""
    s, c = int(meta["input_size"]), int(meta["in_chans"])
    mean = np.asarray(json.loads(meta["mean"]), dtype=np.float32)[None, :, None, None]
    std = np.asarray(json.loads(meta["std"]), dtype=np.float32)[None, :, None, None]
    x = np.stack([resize_nearest(m, s) for m in maps]).astype(np.float32) * 0.5
    x = np.repeat(x[:, None], c, axis=1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def load_maps(path):
    with np.load(path, allow_pickle=False) as z:
        if "maps" in z.files:
            return list(z["maps"])
        flat, shapes, offsets = z["maps_flat"], z["shapes"], z["offsets"]
        return [flat[offsets[i]:offsets[i + 1]].reshape(shapes[i]) for i in range(len(shapes))]


def check_cpu(meta):
    """An INT8 model with 8-bit weights needs VNNI on x86: without it onnxruntime's int16 sums saturate."""
    need = [f for f in meta.get("int8_requires_cpu", "").split("|") if f]
    if not need or platform.machine().lower() not in ("x86_64", "amd64"):
        return
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(ln for ln in f if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return
    if not set(need) & set(flags):
        sys.exit(f"this INT8 model has 8-bit weights and needs an x86 CPU with one of {need}; this one would "
                 "compute it wrongly: re-export with `waferflow export ... --reduce-range` or use model.onnx")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("maps")
    ap.add_argument("--out", help="write predictions as JSON here")
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()

    sess = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    check_cpu(meta)
    class_names = json.loads(meta["class_names"])
    maps = load_maps(args.maps)
    preds = []
    for i in range(0, len(maps), args.batch):
        logits = sess.run(["logits"], {"input": preprocess(maps[i:i + args.batch], meta)})[0]
        preds.extend(int(k) for k in logits.argmax(axis=1))
    result = {"class_names": class_names, "pred": preds, "pred_names": [class_names[k] for k in preds]}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f)
    counts = {n: result["pred_names"].count(n) for n in class_names}
    print(json.dumps({"n": len(preds), "predicted_counts": counts}))


if __name__ == "__main__":
    main()
