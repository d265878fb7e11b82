"""Training-step time with and without the faster depthwise weight gradient (``TrainConfig.fast_depthwise_grad``).

Generates N seed20 maps and splits them 70/15/15, then trains the same candidate (default: full fine-tune of
tf_efficientnet_lite0 from the offline ImageNet weights, 64 px, CPU) with the setting off (the baseline) and on,
alternating, ``--rounds`` times each, so both see the same machine load. Reports the training loop's seconds
(validation excluded), the speed-up of the medians, and each variant's validation figures, which agree to training
noise: the two differ only in the summation order of some weight gradients. ``--layers`` adds, per depthwise
layer of the backbone at that input size, the weight gradient's milliseconds in oneDNN and summed by offsets (a
64-map batch, median of ``--iters``), and whether the training loop takes the offsets path there. Prints one JSON
object.

    python benchmarks/bench_dwgrad.py --n 3000 --epochs 3 --rounds 2 --layers
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--strategy", default="full_finetune")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--layers", action="store_true", help="also time each depthwise layer's weight gradient")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    import torch

    from waferflow.config import load_config
    from waferflow.data.split import split_dataset
    from waferflow.data.synth import generate
    from waferflow.train import TrainConfig, train

    layers = _layer_times(args.input_size, args.iters) if args.layers else None
    sp = split_dataset(generate(args.n, size=64, seed=0, taxonomy="seed20"), val=0.15, test=0.15, seed=0)
    runs: dict[str, list[dict]] = {"baseline": [], "fast": []}
    for r in range(args.rounds):
        for name in ("baseline", "fast"):
            cfg = load_config(TrainConfig, overrides=[
                f"strategy={args.strategy}", f"epochs={args.epochs}", f"input_size={args.input_size}", "patience=0",
                f"fast_depthwise_grad={name == 'fast'}", *args.set])
            with tempfile.TemporaryDirectory() as d:
                res = train(cfg, sp.train, sp.val, Path(d) / "m")
            row = {"round": r, "train_loop_seconds": res.train_seconds,
                   "val_accuracy": res.best_val["accuracy"], "val_macro_f1": res.best_val["macro_f1"]}
            runs[name].append(row)
            print(f"{name} round {r}: {row}", file=sys.stderr, flush=True)
    med = {k: statistics.median(x["train_loop_seconds"] for x in v) for k, v in runs.items()}
    emit({"benchmark": "fast_depthwise_grad", "n_train": len(sp.train), "strategy": args.strategy,
          "epochs": args.epochs, "input_size": args.input_size, "threads": torch.get_num_threads(),
          "overrides": args.set, "median_train_loop_seconds": med,
          "speedup": med["baseline"] / med["fast"] if med["fast"] else None, "runs": runs, "layers": layers}, args.out)
    return 0


def _layer_times(input_size: int, iters: int) -> list[dict]:
    """Each depthwise conv of tf_efficientnet_lite0 at ``input_size``: its weight gradient in oneDNN and by offsets."""
    import time

    import timm
    import torch

    from waferflow.models.dwgrad import depthwise_weight_grad

    def ms(fn) -> float:
        fn()
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return round(1e3 * statistics.median(times), 3)

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).to(memory_format=torch.channels_last)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1}
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: inputs.__setitem__(n, i[0])) for n, m in convs.items()]
    with torch.no_grad():
        model(torch.randn(64, 3, input_size, input_size).contiguous(memory_format=torch.channels_last))
    for h in hooks:
        h.remove()
    rows = []
    for name, m in convs.items():
        x = inputs[name]
        if type(m) is not torch.nn.Conv2d:  # Conv2dSame: the padding applied before the convolution
            from timm.layers.padding import pad_same

            x = pad_same(x, m.weight.shape[-2:], m.stride, m.dilation)
        pad = m.padding if type(m) is torch.nn.Conv2d else (0, 0)
        w = m.weight.detach()
        g = torch.randn_like(torch.nn.functional.conv2d(x, w, None, m.stride, pad, m.dilation, m.groups))
        conf = (list(m.stride), list(pad), list(m.dilation))
        onednn = ms(lambda: torch.ops.aten.convolution_backward(g, x, w, None, *conf, False, [0, 0], m.groups,
                                                                [False, True, False]))
        offsets = ms(lambda: depthwise_weight_grad(x, g, tuple(w.shape[-2:]), m.stride, pad, m.dilation))
        rows.append({"layer": name, "map": list(g.shape[-2:]), "kernel": list(w.shape[-2:]), "channels": w.shape[0],
                     "onednn_ms": onednn, "offsets_ms": offsets,
                     "offsets_path": bool(g.shape[-2] < w.shape[-2] and g.shape[-1] < w.shape[-1])})
    return rows


if __name__ == "__main__":
    sys.exit(main())
