"""The training loop: phases from the strategy, early stopping, checkpoints, resume."""

from __future__ import annotations

import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from waferflow.config import atomic_write_bytes, atomic_write_json, progress_enabled, to_dict
from waferflow.data.contract import WaferDataset, dataset_hash
from waferflow.errors import ConfigError, DataError, ModelFormatError
from waferflow.models import ModelSpec, create_model, preprocess_tensor, save_model_dir
from waferflow.train.adapt import adapt_bn
from waferflow.train.augment import Augmenter, resolve_symmetries
from waferflow.train.config import TrainConfig
from waferflow.train.losses import balanced_sample_weights, build_loss, class_weights
from waferflow.train.strategies import (
    STRATEGIES,
    apply_phase,
    features,
    layer_groups,
    phase_epochs,
    set_train_mode,
)

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    model_dir: Path
    best_val: dict
    best_epoch: int
    history: list
    trainable_params: int
    total_params: int
    train_seconds: float
    throughput_maps_per_s: float
    spec: ModelSpec | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "model_dir": str(self.model_dir), "best_val": self.best_val, "best_epoch": self.best_epoch,
            "trainable_params": self.trainable_params, "total_params": self.total_params,
            "train_seconds": self.train_seconds, "throughput_maps_per_s": self.throughput_maps_per_s,
            "epochs_run": len(self.history), **self.extra,
        }


def resolve_device(setting: str) -> str:
    """``auto`` -> cuda if available else cpu; ``cuda`` without CUDA is an error, never a silent CPU run."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was requested but no CUDA device is available; use --set device=cpu "
                          "or run on a GPU node")
    return setting


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _check_data(train_ds: WaferDataset, val_ds: WaferDataset) -> None:
    for name, ds in (("train", train_ds), ("val", val_ds)):
        if not ds.labeled:
            raise DataError(f"{name} data has no labels; training needs labeled train and val maps")
        ds.validate(require_labels=True)
    if tuple(train_ds.class_names) != tuple(val_ds.class_names):
        raise DataError(f"train and val class names differ: {train_ds.class_names} vs {val_ds.class_names}")
    if len(np.unique(train_ds.labels)) < 2:
        raise DataError("train data holds a single class; a classifier needs at least two")


class _Run:
    """State of one training run (kept in one object so the loop reads top-down)."""

    def __init__(self, cfg: TrainConfig, train_ds: WaferDataset, val_ds: WaferDataset, out_dir: Path,
                 weights: str | None, tracking_uri: str | None):
        self.cfg = cfg
        self.out = out_dir
        self.strategy = STRATEGIES[cfg.strategy]
        self.device = resolve_device(cfg.device)
        self.cuda = self.device.startswith("cuda")
        self.class_names = tuple(train_ds.class_names)
        self.k = len(self.class_names)
        self.taxonomy = train_ds.meta.get("taxonomy")
        self.syms = resolve_symmetries(cfg.symmetries, self.taxonomy, self.class_names)
        if self.strategy.init == "random" and weights not in (None, "none"):
            raise ConfigError(f"strategy scratch starts from random init; it cannot use weights {weights!r}. "
                              "Pick a transfer strategy (e.g. full_finetune) or drop --weights")
        source = "none" if self.strategy.init == "random" else (weights or cfg.pretrained)
        if self.strategy.init != "random" and source == "none":
            raise ConfigError(f"strategy {cfg.strategy} needs pretrained weights but pretrained=none; "
                              "use strategy=scratch for random init")
        self.model, self.spec = create_model(
            cfg.backbone, self.k, pretrained=source, in_chans=cfg.in_chans, input_size=cfg.input_size or None,
            class_names=self.class_names, taxonomy=self.taxonomy, rotation_invariant="rot90" in self.syms,
            tracking_uri=tracking_uri, drop_rate=cfg.drop_rate,
        )
        self.spec = self.spec.replace(strategy=cfg.strategy, data_hash=dataset_hash(train_ds))
        self.model.to(self.device)
        # channels-last also pays on the CPU: measured 2.2x faster Lite0 training steps at 64 px (oneDNN)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        s = self.spec.input_size
        self.x_train = torch.from_numpy(train_ds.resized(s))
        self.y_train = torch.from_numpy(train_ds.labels.astype(np.int64))
        self.x_val = torch.from_numpy(val_ds.resized(s))
        self.y_val = val_ds.labels.astype(np.int64)
        self.groups = layer_groups(self.model)
        w = class_weights(train_ds.labels, self.k, cfg.class_weights)
        self.loss_fn = build_loss(cfg.loss, None if w is None else w.to(self.device), cfg.label_smoothing,
                                  cfg.focal_gamma)
        self.sample_w = balanced_sample_weights(train_ds.labels, self.k) if cfg.balanced_sampler else None
        self.epochs = cfg.epochs or self.strategy.default_epochs
        self.lr = cfg.lr or self.strategy.default_lr
        self.per_phase = phase_epochs(self.strategy, self.epochs)
        self.plan = [(pi, e) for pi, n in enumerate(self.per_phase) for e in range(n)]
        self._feat_cache: dict | None = None
        # a head that holds no pretrained knowledge (new class count, or random init)
        fit = self.spec.extra.get("weights_fit", {})
        self.head_is_new = bool(fit.get("head_reinitialized", True) or fit.get("head_untrained", False))

    # ------------------------------------------------------------------ helpers
    def autocast(self):
        if self.cuda and self.cfg.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def to_input(self, xb: torch.Tensor) -> torch.Tensor:
        x = preprocess_tensor(xb.to(self.device, non_blocking=True), self.spec)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def batches(self, n: int, gen: torch.Generator):
        if self.sample_w is not None:
            order = torch.multinomial(self.sample_w, n, replacement=True, generator=gen)
        else:
            order = torch.randperm(n, generator=gen)
        bs = self.cfg.batch_size
        for i in range(0, n, bs):
            idx = order[i:i + bs]
            if len(idx) < 2 and i > 0:  # a 1-map batch breaks BN in train mode
                continue
            yield idx

    @torch.no_grad()
    def feature_cache(self) -> dict:
        if self._feat_cache is None:
            t = time.perf_counter()
            self.model.eval()
            out = {}
            for split, x in (("train", self.x_train), ("val", self.x_val)):
                chunks = []
                for i in range(0, len(x), self.cfg.eval_batch_size):
                    with self.autocast():
                        chunks.append(features(self.model, self.to_input(x[i:i + self.cfg.eval_batch_size])).float())
                out[split] = torch.cat(chunks)
            self._feat_cache = out
            self.cache_seconds = time.perf_counter() - t
        return self._feat_cache

    @torch.no_grad()
    def val_logits(self, cached: bool) -> np.ndarray:
        self.model.eval()
        if cached:
            return self.model.get_classifier()(self.feature_cache()["val"]).float().cpu().numpy()
        out = []
        for i in range(0, len(self.x_val), self.cfg.eval_batch_size):
            with self.autocast():
                out.append(self.model(self.to_input(self.x_val[i:i + self.cfg.eval_batch_size])).float().cpu())
        return torch.cat(out).numpy()

    def make_optimizer(self, setup, steps: int):
        from timm.optim import create_optimizer_v2
        from timm.scheduler import CosineLRScheduler

        opt = create_optimizer_v2(setup.param_groups, opt=self.cfg.optimizer, lr=self.lr,
                                  weight_decay=self.cfg.weight_decay)
        steps_per_epoch = max(1, steps)
        phase_steps = steps_per_epoch * self.per_phase[self.phase_idx]
        warm = min(int(round(self.cfg.warmup_epochs * steps_per_epoch)), max(0, phase_steps - 1))
        sched = CosineLRScheduler(
            opt, t_initial=max(1, phase_steps - warm), lr_min=self.lr * self.cfg.min_lr_ratio,
            warmup_t=warm, warmup_lr_init=self.lr * 0.01, warmup_prefix=True, t_in_epochs=False,
        )
        sched.step_update(0)
        return opt, sched


def train(cfg: TrainConfig, train_ds: WaferDataset, val_ds: WaferDataset, out_dir, weights: str | None = None,
          resume: bool = False, tracking_uri: str | None = None) -> TrainResult:
    """Train one candidate (backbone x strategy) and write its model dir.

    Args:
        cfg: The resolved training config.
        train_ds: Labeled training maps.
        val_ds: Labeled validation maps (early stopping on macro-F1, best checkpoint).
        out_dir: The model dir to write (``model.json``, ``weights.pt``, ``config.yaml``, ``history.json``,
            ``checkpoints/last.pt``, ``checkpoints/best.pt``).
        weights: A weights source overriding ``cfg.pretrained`` (file, model dir, URL, MLflow URI).
        resume: Carry on from ``out_dir/checkpoints/last.pt``.
        tracking_uri: MLflow tracking URI for an MLflow weights source.

    Returns:
        A :class:`TrainResult`.

    Raises:
        DataError, ConfigError, WeightsError, ModelFormatError: with a message saying how to fix it.
    """
    from tqdm.auto import tqdm

    from waferflow.evaluation import metrics_from_logits

    out = Path(out_dir)
    ckdir = out / "checkpoints"
    last_pt, best_pt = ckdir / "last.pt", ckdir / "best.pt"
    if resume and not last_pt.is_file():
        raise ConfigError(f"--resume: {last_pt} does not exist; nothing to resume (start without --resume)")
    if not resume and last_pt.is_file():
        raise ConfigError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    _check_data(train_ds, val_ds)
    torch.set_num_threads(cfg.num_threads or len(os.sched_getaffinity(0)) or 1)
    gen = seed_everything(cfg.seed)

    state = None
    if resume:
        try:
            state = torch.load(last_pt, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ModelFormatError(f"{last_pt} is corrupt ({type(e).__name__}); delete {ckdir} to start over") from None
        saved = state.get("config", {})
        diffs = {k: (saved.get(k), v) for k, v in to_dict(cfg).items()
                 if k in ("backbone", "strategy", "input_size", "in_chans", "epochs", "seed") and saved.get(k) != v}
        if diffs:
            raise ConfigError(f"--resume with a different config than the killed run: {diffs}")
    run = _Run(cfg, train_ds, val_ds, out, weights, tracking_uri) if state is None else \
        _resume_run(cfg, train_ds, val_ds, out, state, tracking_uri)

    history: list = list(state["history"]) if state else []
    start = int(state["epoch"]) if state else 0
    best_f1 = float(state["best_f1"]) if state else -1.0
    best_epoch = int(state["best_epoch"]) if state else -1
    best_val = dict(state.get("best_val", {})) if state else {}
    stale = int(state.get("stale", 0)) if state else 0
    skip_phase = int(state.get("skip_phase", -1)) if state else -1
    train_seconds = float(state.get("train_seconds", 0.0)) if state else 0.0
    maps_seen = int(state.get("maps_seen", 0)) if state else 0
    max_trainable = int(state.get("max_trainable", 0)) if state else 0
    if state:
        torch.set_rng_state(state["rng_torch"])
        gen.set_state(state["rng_gen"])
    aug = Augmenter(run.syms if run.cfg.augment else (), run.cfg.die_noise if run.cfg.augment else 0.0,
                    run.cfg.scale_jitter if run.cfg.augment else 0.0, generator=gen)
    do_adapt = run.strategy.adapt_bn if run.cfg.adapt_bn is None else run.cfg.adapt_bn
    if do_adapt and state is None and run.strategy.init == "pretrained":
        run.bn_report = adapt_bn(run.model, run.spec, run.x_train.numpy(), batch_size=64, device=run.device)
    opt = sched = None
    cur_phase = -1
    phase_opt_loaded = False
    ckdir.mkdir(parents=True, exist_ok=True)
    epoch_times: dict[str, list] = {}
    for g_epoch in range(start, len(run.plan)):
        pi, e_in = run.plan[g_epoch]
        phase = run.strategy.phases[pi]
        if pi == skip_phase:
            continue
        if pi != cur_phase:
            run.phase_idx = pi
            setup = apply_phase(run.model, run.groups, phase, run.lr, run.cfg.lr_decay, run.cfg.weight_decay)
            max_trainable = max(max_trainable, setup.trainable_params)
            n_train = len(run.x_train)
            steps = math.ceil(n_train / run.cfg.batch_size)
            std_head = None
            if phase.depth == 0 and isinstance(run.model.get_classifier(), nn.Linear):
                # frozen backbone: the head trains on standardized features (cached or recomputed each step)
                resuming_mid_phase = state is not None and int(state["phase"]) == pi and e_in > 0
                fresh = run.head_is_new and not resuming_mid_phase and pi == 0
                std_head = _StandardizedHead(run.model.get_classifier(), run.feature_cache()["train"], fresh=fresh)
                std_head.swap_params(setup.param_groups)
            opt, sched = run.make_optimizer(setup, steps)
            if state is not None and not phase_opt_loaded and int(state["phase"]) == pi and e_in > 0:
                opt.load_state_dict(state["optimizer"])
                sched.load_state_dict(state["scheduler"])
                step_in_phase = int(state.get("step_in_phase", 0))
            else:
                step_in_phase = 0
                stale = 0
            phase_opt_loaded = True
            cur_phase = pi
        cached = phase.cached_features and run.cfg.feature_cache
        if cached:
            feats = run.feature_cache()  # computed once; its time is reported as feature_cache_seconds
        t0 = time.perf_counter()
        set_train_mode(run.model, setup.frozen_bn)
        if phase.depth == 0 and not cached:
            run.model.eval()  # frozen backbone: every BN in eval mode (head has none)
        tot_loss, n_seen = 0.0, 0
        n = len(run.x_train)
        bar = tqdm(list(run.batches(n, gen)), desc=f"{run.cfg.strategy} e{g_epoch + 1}/{len(run.plan)} {phase.name}",
                   disable=not progress_enabled(), leave=False)
        head = run.model.get_classifier()
        for idx in bar:
            yb = run.y_train[idx].to(run.device)
            with run.autocast():
                if cached or std_head is not None:
                    if cached:
                        f = feats["train"][idx]
                    else:  # the no-cache baseline: the frozen backbone runs on every step
                        xb = aug(run.x_train[idx]) if run.cfg.augment else run.x_train[idx]
                        with torch.no_grad():
                            f = features(run.model, run.to_input(xb)).float()
                    if std_head is not None:
                        logits = std_head(f, run.cfg.drop_rate)
                    else:
                        logits = head(F.dropout(f, run.cfg.drop_rate, training=True))
                else:
                    xb = run.x_train[idx]
                    if run.cfg.augment:
                        xb = aug(xb)
                    logits = run.model(run.to_input(xb))
                loss = run.loss_fn(logits.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step_in_phase += 1
            sched.step_update(step_in_phase)
            tot_loss += float(loss.detach()) * len(idx)
            n_seen += len(idx)
            bar.set_postfix(loss=f"{tot_loss / n_seen:.4f}")
        bar.close()
        if std_head is not None:
            std_head.fold_into_classifier()
        secs = time.perf_counter() - t0
        train_seconds += secs
        maps_seen += n_seen
        logits = run.val_logits(cached)
        m = metrics_from_logits(run.y_val, logits, run.class_names)
        val_loss = float(F.cross_entropy(torch.from_numpy(logits).float(), torch.from_numpy(run.y_val)))
        row = {
            "epoch": g_epoch + 1, "phase": phase.name, "train_loss": tot_loss / max(1, n_seen), "val_loss": val_loss,
            "val_accuracy": m["overall"]["accuracy"], "val_macro_f1": m["overall"]["macro_f1"],
            "val_balanced_accuracy": m["overall"]["balanced_accuracy"],
            "lr": max(g["lr"] for g in opt.param_groups), "seconds": secs,
            "trainable_params": setup.trainable_params, "cached_features": bool(cached),
        }
        history.append(row)
        epoch_times.setdefault(phase.name, []).append(secs)
        log.info("epoch %d (%s): loss %.4f val acc %.4f f1 %.4f (%.1fs)", g_epoch + 1, phase.name, row["train_loss"],
                 row["val_accuracy"], row["val_macro_f1"], secs)
        if m["overall"]["macro_f1"] > best_f1:
            best_f1, best_epoch, best_val, stale = m["overall"]["macro_f1"], g_epoch + 1, m["overall"], 0
            _save(best_pt, {k: v.detach().cpu() for k, v in run.model.state_dict().items()})
        else:
            stale += 1
        if run.cfg.patience and stale >= run.cfg.patience and e_in < run.per_phase[pi] - 1:
            log.info("early stop of phase %s after %d epochs without val macro-F1 gain", phase.name, stale)
            skip_phase = pi
        _save(last_pt, {
            "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
            "optimizer": opt.state_dict(), "scheduler": _sched_state(sched),
            "rng_torch": torch.get_rng_state(), "rng_gen": gen.get_state(),
            "epoch": g_epoch + 1, "phase": pi, "step_in_phase": step_in_phase, "best_f1": best_f1, "best_epoch": best_epoch, "best_val": best_val,
            "stale": stale, "skip_phase": skip_phase, "history": history, "train_seconds": train_seconds,
            "maps_seen": maps_seen, "max_trainable": max_trainable, "config": to_dict(run.cfg),
            "spec": run.spec.to_dict(),
        })
        atomic_write_json(out / "history.json", history)
    if not best_pt.is_file():
        raise ModelFormatError(f"training ran no epoch, so {best_pt} was never written; check epochs/strategy")
    run.model.load_state_dict(torch.load(best_pt, map_location="cpu", weights_only=True))
    run.model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    extra = {"best_epoch": best_epoch, "best_val": best_val, "symmetries": list(run.syms),
             "epoch_seconds": {k: float(np.mean(v)) for k, v in epoch_times.items()}}
    if getattr(run, "bn_report", None):
        extra["adapt_bn"] = {k: v for k, v in run.bn_report.items() if k != "per_layer"}
    if getattr(run, "cache_seconds", None) is not None:
        extra["feature_cache_seconds"] = run.cache_seconds
    spec = run.spec.replace(extra={**run.spec.extra, **{"train": extra}})
    save_model_dir(run.model, spec, out, history=history, config=run.cfg)
    total = sum(p.numel() for p in run.model.parameters())
    return TrainResult(
        model_dir=out, best_val=best_val, best_epoch=best_epoch, history=history, trainable_params=max_trainable,
        total_params=total, train_seconds=train_seconds,
        throughput_maps_per_s=maps_seen / train_seconds if train_seconds > 0 else 0.0, spec=spec,
        extra={"epoch_seconds": extra["epoch_seconds"], "feature_cache_seconds": extra.get("feature_cache_seconds"),
               "weights_source": spec.weights_source},
    )


class _StandardizedHead(nn.Module):
    """A linear head trained on standardized cached features, folded back into the model's classifier.

    Training on ``(f - mu) / sd`` keeps the optimization well-conditioned whatever the scale of the frozen
    features; ``fold_into_classifier`` writes the exact equivalent ``W / sd``, ``b - (W / sd) @ mu`` into
    the real classifier, so the saved model needs no extra layer.
    """

    def __init__(self, clf: nn.Linear, train_feats: torch.Tensor, fresh: bool = False):
        super().__init__()
        self.clf = [clf]  # not a submodule
        self.mu = train_feats.mean(0)
        sd = train_feats.std(0)
        # near-constant features (e.g. dead activations) would get huge folded weights that explode once
        # the backbone unfreezes; floor their scale at a tenth of the median feature scale
        self.sd = sd.clamp_min(max(1e-4, 0.1 * float(sd.median())))
        self.lin = nn.Linear(clf.in_features, clf.out_features).to(clf.weight.device)
        with torch.no_grad():
            if fresh:  # a new head: small weights on unit-scale features
                nn.init.normal_(self.lin.weight, std=0.01)
                nn.init.zeros_(self.lin.bias)
            else:  # start from the current classifier (exactly the same function)
                self.lin.weight.copy_(clf.weight * self.sd)
                self.lin.bias.copy_(clf.bias + clf.weight @ self.mu)
        if fresh:
            self.fold_into_classifier()

    def swap_params(self, param_groups: list[dict]) -> None:
        clf = self.clf[0]
        mapping = {id(clf.weight): self.lin.weight, id(clf.bias): self.lin.bias}
        for g in param_groups:
            g["params"] = [mapping.get(id(p), p) for p in g["params"]]

    def forward(self, f: torch.Tensor, drop_rate: float = 0.0) -> torch.Tensor:
        return self.lin(F.dropout((f - self.mu) / self.sd, drop_rate, training=self.training))

    @torch.no_grad()
    def fold_into_classifier(self) -> None:
        clf = self.clf[0]
        w = self.lin.weight / self.sd
        clf.weight.copy_(w)
        clf.bias.copy_(self.lin.bias - w @ self.mu)


def _resume_run(cfg, train_ds, val_ds, out, state, tracking_uri) -> _Run:
    """Rebuild the run without fetching weights again; the checkpoint holds them."""
    spec_d = state.get("spec") or {}
    run = _Run(cfg.__class__(**{**to_dict(cfg), "pretrained": "none", "strategy": "scratch"}), train_ds, val_ds, out,
               "none", tracking_uri)
    run.cfg = cfg
    run.strategy = STRATEGIES[cfg.strategy]
    run.epochs = cfg.epochs or run.strategy.default_epochs
    run.lr = cfg.lr or run.strategy.default_lr
    run.per_phase = phase_epochs(run.strategy, run.epochs)
    run.plan = [(pi, e) for pi, n in enumerate(run.per_phase) for e in range(n)]
    try:
        run.model.load_state_dict(state["model"], strict=True)
    except RuntimeError as e:
        raise ModelFormatError(f"checkpoint does not fit the model: {str(e)[:200]}") from None
    if spec_d:
        run.spec = ModelSpec.from_dict(spec_d)
    return run


def _sched_state(sched) -> dict:
    return {k: v for k, v in sched.state_dict().items() if isinstance(v, (int, float, str, bool, list, tuple,
                                                                           type(None)))}


def _save(path: Path, obj) -> None:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
