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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from waferflow.config import atomic_write_bytes, atomic_write_json, progress_enabled, to_dict
from waferflow.data.contract import WaferDataset, dataset_hash
from waferflow.errors import ConfigError, DataError, ModelFormatError
from waferflow.host import describe_host
from waferflow.models import ModelSpec, create_model, preprocess_tensor, save_model_dir
from waferflow.models.dwgrad import fast_depthwise_grad
from waferflow.predictors import penultimate_features, predict_batches
from waferflow.train.adapt import adapt_bn
from waferflow.train.augment import Augmenter, resolve_symmetries
from waferflow.train.config import CHECKPOINTS, TrainConfig
from waferflow.train.consistency import Consistency, check_pool, build as build_consistency
from waferflow.train.losses import balanced_sample_weights, build_loss, class_weights, training_logit_shift
from waferflow.train.malloc import keep_freed_memory
from waferflow.train.strategies import (
    STRATEGIES,
    Phase,
    PhaseSetup,
    apply_phase,
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


@dataclass
class LoopState:
    """Progress of a run: everything :func:`train` carries between epochs, and all that ``--resume`` restores
    besides the model, optimizer, scheduler and RNG states. It round-trips through ``checkpoints/last.pt``."""

    epoch: int = 0  # epochs of the plan done (the next one to run is ``plan[epoch]``)
    phase: int = -1  # the phase the last finished epoch belonged to
    step_in_phase: int = 0
    steps: int = 0  # optimizer steps of the whole run (the weight average's warm-up counts them)
    best_score: float = float("-inf")  # of the kept checkpoint, by ``TrainConfig.checkpoint`` (higher is better)
    best_epoch: int = -1
    best_val: dict = field(default_factory=dict)
    stale: int = 0  # epochs without a gain of the checkpoint criterion
    skip_phase: int = -1  # a phase ended early by patience
    history: list = field(default_factory=list)
    train_seconds: float = 0.0
    maps_seen: int = 0
    max_trainable: int = 0

    def to_checkpoint(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_checkpoint(cls, ck: dict) -> "LoopState":
        fields = cls.__dataclass_fields__
        st = cls(**{k: ck[k] for k in fields if k in ck})
        if "best_score" not in ck and "best_f1" in ck:  # a checkpoint written before ``TrainConfig.checkpoint``
            st.best_score = float(ck["best_f1"])
        st.history, st.best_val = list(st.history), dict(st.best_val)
        return st


class _Run:
    """What stays fixed during one training run: config, data tensors, model, loss and the epoch plan."""

    def __init__(self, cfg: TrainConfig, train_ds: WaferDataset, val_ds: WaferDataset, source: str,
                 tracking_uri: str | None):
        self.cfg = cfg
        self.strategy = STRATEGIES[cfg.strategy]
        self.device = resolve_device(cfg.device)
        self.cuda = self.device.startswith("cuda")
        self.class_names = tuple(train_ds.class_names)
        self.k = len(self.class_names)
        self.taxonomy = train_ds.meta.get("taxonomy")
        self.syms = resolve_symmetries(cfg.symmetries, self.taxonomy, self.class_names)
        self.model, self.spec = create_model(
            cfg.backbone, self.k, pretrained=source, in_chans=cfg.in_chans, input_size=cfg.input_size or None,
            class_names=self.class_names, taxonomy=self.taxonomy, rotation_invariant="rot90" in self.syms,
            tracking_uri=tracking_uri, drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate,
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
        self.class_w = w = class_weights(train_ds.labels, self.k, cfg.class_weights)
        self.loss_fn = build_loss(cfg.loss, None if w is None else w.to(self.device), cfg.label_smoothing,
                                  cfg.focal_gamma)
        self.sample_w = balanced_sample_weights(train_ds.labels, self.k) if cfg.balanced_sampler else None
        self.logit_shift = training_logit_shift(train_ds.labels, self.k, cfg.class_weights, cfg.balanced_sampler)
        self.steps_per_epoch = steps_per_epoch(len(train_ds), cfg.batch_size)
        self.epochs = cfg.epochs or (max(math.ceil(cfg.steps / self.steps_per_epoch), cfg.min_epochs) if cfg.steps
                                     else self.strategy.default_epochs)
        self.patience = (math.ceil(cfg.patience_steps / self.steps_per_epoch) if cfg.patience_steps
                         else cfg.patience)
        self.lr = cfg.lr or self.strategy.default_lr
        self.per_phase = phase_epochs(self.strategy, self.epochs)
        self.plan = [(pi, e) for pi, n in enumerate(self.per_phase) for e in range(n)]
        self._feat_cache: dict | None = None
        self.cache_seconds: float | None = None
        self.bn_report: dict | None = None
        self.ema = None  # the weight average (cfg.ema_decay), started by start_ema once the weights are final
        self.consistency: Consistency | None = None  # cfg.unlabeled_weight's term, set by train()
        # a head that holds no pretrained knowledge (new class count, or random init)
        fit = self.spec.extra.get("weights_fit", {})
        self.head_is_new = bool(fit.get("head_reinitialized", True) or fit.get("head_untrained", False))

    @classmethod
    def fresh(cls, cfg: TrainConfig, train_ds: WaferDataset, val_ds: WaferDataset, weights: str | None,
              tracking_uri: str | None) -> "_Run":
        """A new run: the model starts from the strategy's weights source."""
        init = STRATEGIES[cfg.strategy].init
        if init == "random" and weights not in (None, "none"):
            raise ConfigError(f"strategy scratch starts from random init; it cannot use weights {weights!r}. "
                              "Pick a transfer strategy (e.g. full_finetune) or drop --weights")
        source = "none" if init == "random" else (weights or cfg.pretrained)
        if init != "random" and source == "none":
            raise ConfigError(f"strategy {cfg.strategy} needs pretrained weights but pretrained=none; "
                              "use strategy=scratch for random init")
        return cls(cfg, train_ds, val_ds, source, tracking_uri)

    @classmethod
    def restore(cls, cfg: TrainConfig, train_ds: WaferDataset, val_ds: WaferDataset, ck: dict,
                tracking_uri: str | None) -> "_Run":
        """A resumed run: the model is built without fetching weights again; the checkpoint holds them."""
        run = cls(cfg, train_ds, val_ds, "none", tracking_uri)
        try:
            run.model.load_state_dict(ck["model"], strict=True)
        except RuntimeError as e:
            raise ModelFormatError(f"checkpoint does not fit the model: {str(e)[:200]}") from None
        if ck.get("spec"):
            run.spec = ModelSpec.from_dict(ck["spec"])
        return run

    def start_ema(self, ck: dict | None) -> None:
        """Start the weight average from the model as it is now, or restore it from a resumed checkpoint."""
        if not self.cfg.ema_decay:
            return
        from timm.utils import ModelEmaV3

        self.ema = ModelEmaV3(self.model, decay=self.cfg.ema_decay, use_warmup=True)
        if ck is not None:
            self.ema.module.load_state_dict(ck["ema"], strict=True)

    @property
    def net(self) -> nn.Module:
        """The weights validation judges and the checkpoints keep: the average when there is one."""
        return self.model if self.ema is None else self.ema.module

    def autocast(self):
        if self.cuda and self.cfg.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def to_input(self, xb: torch.Tensor) -> torch.Tensor:
        x = preprocess_tensor(xb.to(self.device, non_blocking=True), self.spec)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def batches(self, gen: torch.Generator):
        n = len(self.x_train)
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
        """Backbone features of the train and val maps, computed once (feature extraction's cache)."""
        if self._feat_cache is None:
            t = time.perf_counter()
            self.model.eval()
            out = {}
            for split, x in (("train", self.x_train), ("val", self.x_val)):
                out[split] = torch.cat(list(predict_batches(self._features, x, self.cfg.eval_batch_size)))
            self._feat_cache = out
            self.cache_seconds = time.perf_counter() - t
        return self._feat_cache

    @torch.no_grad()
    def val_logits(self, cached: bool) -> np.ndarray:
        self.net.eval()
        if cached:
            return self.net.get_classifier()(self.feature_cache()["val"]).float().cpu().numpy()
        return torch.cat(list(predict_batches(self._logits, self.x_val, self.cfg.eval_batch_size))).numpy()

    def _features(self, xb: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return penultimate_features(self.model, self.to_input(xb)).float()

    def _logits(self, xb: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.net(self.to_input(xb)).float().cpu()

    def make_optimizer(self, setup, phase_idx: int):
        from timm.optim import create_optimizer_v2
        from timm.scheduler import CosineLRScheduler

        opt = create_optimizer_v2(setup.param_groups, opt=self.cfg.optimizer, lr=self.lr,
                                  weight_decay=self.cfg.weight_decay)
        phase_steps = self.steps_per_epoch * self.per_phase[phase_idx]
        warm = min(int(round(self.cfg.warmup_epochs * self.steps_per_epoch)), max(0, phase_steps - 1))
        sched = CosineLRScheduler(
            opt, t_initial=max(1, phase_steps - warm), lr_min=self.lr * self.cfg.min_lr_ratio,
            warmup_t=warm, warmup_lr_init=self.lr * 0.01, warmup_prefix=True, t_in_epochs=False,
        )
        sched.step_update(0)
        return opt, sched


@dataclass
class _PhaseRun:
    """The optimizer side of the phase in progress."""

    index: int
    phase: Phase
    setup: PhaseSetup
    opt: torch.optim.Optimizer
    sched: Any  # timm CosineLRScheduler
    std_head: _StandardizedHead | None
    cached: bool

    @property
    def head_only(self) -> bool:
        """Steps train only the head, on cached or frozen features (with a standardized head, its weights live
        outside the model until the phase folds them in)."""
        return self.cached or self.std_head is not None


def train(cfg: TrainConfig, train_ds: WaferDataset, val_ds: WaferDataset, out_dir, weights: str | None = None,
          resume: bool = False, tracking_uri: str | None = None,
          unlabeled: WaferDataset | None = None) -> TrainResult:
    """Train one candidate (backbone x strategy) and write its model dir.

    Args:
        cfg: The resolved training config.
        train_ds: Labeled training maps.
        val_ds: Labeled validation maps (early stopping and the kept checkpoint, by ``cfg.checkpoint``).
        out_dir: The model dir to write (``model.json``, ``weights.pt``, ``config.yaml``, ``history.json``,
            ``checkpoints/last.pt``, ``checkpoints/best.pt``).
        weights: A weights source overriding ``cfg.pretrained`` (file, model dir, URL, MLflow URI).
        resume: Carry on from ``out_dir/checkpoints/last.pt``.
        tracking_uri: MLflow tracking URI for an MLflow weights source.
        unlabeled: Unlabeled maps for ``cfg.unlabeled_weight``'s consistency term (``waferflow.train.consistency``;
            only their pixels are read). Required when that weight is above 0, unused otherwise.

    Returns:
        A :class:`TrainResult`.

    Raises:
        DataError, ConfigError, WeightsError, ModelFormatError: with a message saying how to fix it.
    """
    out = Path(out_dir)
    ck = _load_resume_checkpoint(out, cfg, resume)
    _check_data(train_ds, val_ds)
    check_pool(cfg, unlabeled)
    torch.set_num_threads(cfg.num_threads or len(os.sched_getaffinity(0)) or 1)
    if cfg.keep_freed_memory:
        keep_freed_memory()
    gen = seed_everything(cfg.seed)
    if ck is None:
        run, st = _Run.fresh(cfg, train_ds, val_ds, weights, tracking_uri), LoopState()
    else:
        run, st = _Run.restore(cfg, train_ds, val_ds, ck, tracking_uri), LoopState.from_checkpoint(ck)
        torch.set_rng_state(ck["rng_torch"])
        gen.set_state(ck["rng_gen"])
    aug = _augmenter(run, gen)
    run.consistency = build_consistency(cfg, unlabeled, run.spec.input_size, run.syms, run.class_w, gen)
    do_adapt = run.strategy.adapt_bn if run.cfg.adapt_bn is None else run.cfg.adapt_bn
    if do_adapt and ck is None and run.strategy.init == "pretrained":
        run.bn_report = adapt_bn(run.model, run.spec, run.x_train.numpy(), batch_size=64, device=run.device)
    run.start_ema(ck)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    epoch_times: dict[str, list] = {}
    with fast_depthwise_grad(run.model, enabled=run.cfg.fast_depthwise_grad and not run.cuda):
        _run_epochs(run, st, ck, aug, gen, out, epoch_times)
    return _finalise(run, st, out, epoch_times)


def _augmenter(run: _Run, gen: torch.Generator) -> Augmenter:
    """The run's augmentation; a free rotation only where rot90 keeps every label (else off, with a warning)."""
    cfg = run.cfg
    if not cfg.augment:
        return Augmenter((), generator=gen)
    rotation = cfg.rotation if "rot90" in run.syms else 0.0
    if cfg.rotation and not rotation:
        log.warning("rotation=%s is off: rot90 is not among this data's symmetries %s, so a rotation could change "
                    "a label (set symmetries=... to the transforms that keep every label)", cfg.rotation,
                    list(run.syms))
    return Augmenter(run.syms, cfg.die_noise, cfg.scale_jitter, generator=gen, rotation=rotation,
                     rotation_prob=cfg.rotation_prob)


def _run_epochs(run: _Run, st: LoopState, ck: dict | None, aug: Augmenter, gen: torch.Generator, out: Path,
                epoch_times: dict[str, list]) -> None:
    """The epoch plan from ``st.epoch`` on: each phase started once, then train, validate, checkpoint."""
    pr: _PhaseRun | None = None
    for g_epoch in range(st.epoch, len(run.plan)):
        pi, e_in = run.plan[g_epoch]
        if pi == st.skip_phase:
            continue
        if pr is None or pr.index != pi:
            # only the first phase this process starts can be one the checkpoint left half-done
            mid_phase = pr is None and ck is not None and e_in > 0 and int(ck["phase"]) == pi
            pr = _start_phase(run, st, pi, ck if mid_phase else None)
            if run.cfg.mixup_alpha and pr.head_only:
                log.info("phase %s trains only the head: no mixup in its epochs", pr.phase.name)
        secs, loss = _train_epoch(run, st, pr, aug, gen, g_epoch)
        row, overall = _validate(run, pr, g_epoch, loss, secs)
        if run.consistency is not None:
            row["unlabeled_confident"] = run.consistency.take_rate()
        epoch_times.setdefault(pr.phase.name, []).append(secs)
        _end_epoch(run, st, pr, g_epoch, e_in, row, overall, gen, out)


def _load_resume_checkpoint(out: Path, cfg: TrainConfig, resume: bool) -> dict | None:
    """The checkpoint ``--resume`` carries on from (None for a fresh run), after checking it fits ``cfg``."""
    last_pt = out / "checkpoints" / "last.pt"
    if resume and not last_pt.is_file():
        raise ConfigError(f"--resume: {last_pt} does not exist; nothing to resume (start without --resume)")
    if not resume and last_pt.is_file():
        raise ConfigError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    if not resume:
        return None
    try:
        ck = torch.load(last_pt, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelFormatError(f"{last_pt} is corrupt ({type(e).__name__}); delete {last_pt.parent} to start "
                               "over") from None
    saved = ck.get("config", {})
    keys = ("backbone", "strategy", "input_size", "in_chans", "epochs", "steps", "min_epochs", "seed", "ema_decay",
            "unlabeled_weight", "unlabeled_threshold", "unlabeled_ratio", "mixup_alpha")
    # a key the killed run's version did not have yet had its default then
    diffs = {k: (saved.get(k, getattr(type(cfg), k)), v) for k, v in to_dict(cfg).items()
             if k in keys and saved.get(k, getattr(type(cfg), k)) != v}
    if diffs:
        raise ConfigError(f"--resume with a different config than the killed run: {diffs}")
    return ck


def _start_phase(run: _Run, st: LoopState, pi: int, mid_phase_ck: dict | None) -> _PhaseRun:
    """Freeze/unfreeze for phase ``pi`` and build its optimizer; ``mid_phase_ck`` resumes one in progress."""
    phase = run.strategy.phases[pi]
    setup = apply_phase(run.model, run.groups, phase, run.lr, run.cfg.lr_decay, run.cfg.weight_decay)
    st.max_trainable = max(st.max_trainable, setup.trainable_params)
    std_head = None
    if phase.depth == 0 and isinstance(run.model.get_classifier(), nn.Linear):
        # frozen backbone: the head trains on standardized features (cached or recomputed each step)
        fresh = run.head_is_new and mid_phase_ck is None and pi == 0
        std_head = _StandardizedHead(run.model.get_classifier(), run.feature_cache()["train"], fresh=fresh)
        std_head.swap_params(setup.param_groups)
    opt, sched = run.make_optimizer(setup, pi)
    if mid_phase_ck is not None:
        opt.load_state_dict(mid_phase_ck["optimizer"])
        sched.load_state_dict(mid_phase_ck["scheduler"])
        st.step_in_phase = int(mid_phase_ck.get("step_in_phase", 0))
    else:
        st.step_in_phase, st.stale = 0, 0
    cached = phase.cached_features and run.cfg.feature_cache
    return _PhaseRun(pi, phase, setup, opt, sched, std_head, cached)


def _forward(run: _Run, pr: _PhaseRun, idx: torch.Tensor, aug: Augmenter,
             extra: torch.Tensor | None = None, mix: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
    """Logits of one batch: on cached features, on features of a frozen backbone, or through the whole model
    (with ``extra`` maps, already augmented, after the batch's in the same forward pass; with ``mix`` =
    ``(order, lam)``, the batch's own inputs mixed with themselves in that order, in place, so the memory
    format ``to_input`` chose stays)."""
    if not pr.head_only:
        xb = aug(run.x_train[idx]) if run.cfg.augment else run.x_train[idx]
        x = run.to_input(xb if extra is None else torch.cat([xb, extra]))
        if mix is not None:
            order, lam = mix
            n = len(idx)
            x[:n] = lam * x[:n] + (1.0 - lam) * x[:n][order]
        return run.model(x)
    if pr.cached:
        f = run.feature_cache()["train"][idx]
    else:  # the no-cache baseline: the frozen backbone runs on every step
        xb = aug(run.x_train[idx]) if run.cfg.augment else run.x_train[idx]
        with torch.no_grad():
            f = penultimate_features(run.model, run.to_input(xb)).float()
    if pr.std_head is not None:
        return pr.std_head(f, run.cfg.drop_rate)
    return run.model.get_classifier()(F.dropout(f, run.cfg.drop_rate, training=True))


def _train_epoch(run: _Run, st: LoopState, pr: _PhaseRun, aug: Augmenter, gen: torch.Generator,
                 g_epoch: int) -> tuple[float, float]:
    """One pass over the training maps; returns (seconds, mean loss)."""
    from tqdm.auto import tqdm

    if pr.cached:
        run.feature_cache()  # computed once; its time is reported as feature_cache_seconds
    t0 = time.perf_counter()
    set_train_mode(run.model, pr.setup.frozen_bn)
    if pr.phase.depth == 0 and not pr.cached:
        run.model.eval()  # frozen backbone: every BN in eval mode (head has none)
    tot_loss, n_seen = 0.0, 0
    cons = None if pr.head_only else run.consistency
    bar = tqdm(list(run.batches(gen)), desc=f"{run.cfg.strategy} e{g_epoch + 1}/{len(run.plan)} {pr.phase.name}",
               disable=not progress_enabled(), leave=False)
    for idx in bar:
        yb = run.y_train[idx].to(run.device)
        with run.autocast():
            loss = _step_loss(run, pr, idx, aug, yb, cons, gen)
        pr.opt.zero_grad(set_to_none=True)
        loss.backward()
        pr.opt.step()
        st.step_in_phase += 1
        st.steps += 1
        if run.ema is not None and not pr.head_only:
            run.ema.update(run.model, step=st.steps)
        pr.sched.step_update(st.step_in_phase)
        tot_loss += float(loss.detach()) * len(idx)
        n_seen += len(idx)
        bar.set_postfix(loss=f"{tot_loss / n_seen:.4f}")
    bar.close()
    if pr.std_head is not None:
        pr.std_head.fold_into_classifier()
    if run.ema is not None and pr.head_only:
        run.ema.set(run.model)
    secs = time.perf_counter() - t0
    st.train_seconds += secs
    st.maps_seen += n_seen
    return secs, tot_loss / max(1, n_seen)


def _step_loss(run: _Run, pr: _PhaseRun, idx: torch.Tensor, aug: Augmenter, yb: torch.Tensor,
               cons: Consistency | None, gen: torch.Generator) -> torch.Tensor:
    """The labeled batch's loss (mixed, with ``train.mixup_alpha``, where the whole model runs), plus the
    consistency term on unlabeled maps when ``cons`` is given."""
    mix = None
    if run.cfg.mixup_alpha and not pr.head_only:
        order, lam = _mixup_draw(run.cfg.mixup_alpha, len(idx), gen)
        mix = (order.to(run.device), lam)  # the generator is the CPU's; the batch is on run.device
    extra = target = mask = None
    if cons is not None:
        x_u = cons.draw(len(idx))
        target, mask = cons.targets(run.model, run.to_input, x_u)
        extra = aug(x_u) if run.cfg.augment else x_u
    logits = _forward(run, pr, idx, aug, extra=extra, mix=mix).float()
    n = len(idx)
    loss = run.loss_fn(logits[:n], yb)
    if mix is not None:
        order, lam = mix
        loss = lam * loss + (1.0 - lam) * run.loss_fn(logits[:n], yb[order])
    if cons is not None:
        loss = loss + cons.loss(logits[n:], target.to(run.device), mask.to(run.device))
    return loss


def _mixup_draw(alpha: float, n: int, gen: torch.Generator) -> tuple[torch.Tensor, float]:
    """One batch's mixup: the order its maps are mixed with, and lam ~ Beta(alpha, alpha). Both come from the
    run's generator (so a resumed run draws what the killed one would have): torch's Beta takes no generator, so
    lam comes from a numpy generator seeded by a draw from it."""
    order = torch.randperm(n, generator=gen)
    seed = int(torch.randint(2**62, (1,), generator=gen))
    return order, float(np.random.default_rng(seed).beta(alpha, alpha))


def _validate(run: _Run, pr: _PhaseRun, g_epoch: int, train_loss: float, secs: float) -> tuple[dict, dict]:
    """The history row of an epoch and the ``overall`` validation metrics of the model as it stands."""
    from waferflow.evaluation import metrics_from_logits

    logits = run.val_logits(pr.cached)
    m = metrics_from_logits(run.y_val, logits, run.class_names)
    val_loss = float(F.cross_entropy(torch.from_numpy(logits).float(), torch.from_numpy(run.y_val)))
    return {
        "epoch": g_epoch + 1, "phase": pr.phase.name, "train_loss": train_loss, "val_loss": val_loss,
        "val_accuracy": m["overall"]["accuracy"], "val_macro_f1": m["overall"]["macro_f1"],
        "val_balanced_accuracy": m["overall"]["balanced_accuracy"],
        "lr": max(g["lr"] for g in pr.opt.param_groups), "seconds": secs,
        "trainable_params": pr.setup.trainable_params, "cached_features": bool(pr.cached),
    }, m["overall"]


def _end_epoch(run: _Run, st: LoopState, pr: _PhaseRun, g_epoch: int, e_in: int, row: dict, overall: dict,
               gen: torch.Generator, out: Path) -> None:
    """Keep the best model, apply patience, and write ``last.pt`` and ``history.json``."""
    st.history.append(row)
    log.info("epoch %d (%s): loss %.4f val acc %.4f f1 %.4f (%.1fs)", g_epoch + 1, pr.phase.name, row["train_loss"],
             row["val_accuracy"], row["val_macro_f1"], row["seconds"])
    score = checkpoint_score(run.cfg.checkpoint, overall, row)
    if score > st.best_score:
        st.best_score, st.best_epoch, st.best_val, st.stale = score, g_epoch + 1, overall, 0
        _save(out / "checkpoints" / "best.pt", _cpu_state(run.net))
    else:
        st.stale += 1
    if run.patience and st.stale >= run.patience and e_in < run.per_phase[pr.index] - 1:
        log.info("early stop of phase %s after %d epochs without a val %s gain", pr.phase.name, st.stale,
                 run.cfg.checkpoint)
        st.skip_phase = pr.index
    st.epoch, st.phase = g_epoch + 1, pr.index
    _save(out / "checkpoints" / "last.pt", {
        "model": _cpu_state(run.model),
        "optimizer": pr.opt.state_dict(), "scheduler": _sched_state(pr.sched),
        "rng_torch": torch.get_rng_state(), "rng_gen": gen.get_state(),
        "ema": None if run.ema is None else _cpu_state(run.ema.module),
        **st.to_checkpoint(), "config": to_dict(run.cfg), "spec": run.spec.to_dict(),
    })
    atomic_write_json(out / "history.json", st.history)


def checkpoint_score(mode: str, overall: dict, row: dict) -> float:
    """How ``TrainConfig.checkpoint`` ranks an epoch (higher is kept): its validation macro-F1, its negated validation
    cross-entropy, or for ``last`` its epoch number (every epoch beats the one before, so none is ever stale)."""
    if mode == "macro_f1":
        return float(overall["macro_f1"])
    if mode == "loss":
        return -float(row["val_loss"])
    if mode == "last":
        return float(row["epoch"])
    raise ConfigError(f"checkpoint must be one of {CHECKPOINTS}, got {mode!r}")


def _finalise(run: _Run, st: LoopState, out: Path, epoch_times: dict[str, list]) -> TrainResult:
    """Load the best checkpoint and write the model dir."""
    best_pt = out / "checkpoints" / "best.pt"
    if not best_pt.is_file():
        raise ModelFormatError(f"training ran no epoch, so {best_pt} was never written; check epochs/strategy")
    run.model.load_state_dict(torch.load(best_pt, map_location="cpu", weights_only=True))
    run.model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    extra = {"best_epoch": st.best_epoch, "best_val": st.best_val, "symmetries": list(run.syms),
             "epoch_seconds": {k: float(np.mean(v)) for k, v in epoch_times.items()},
             "budget": {"steps": run.cfg.steps, "min_epochs": run.cfg.min_epochs,
                        "steps_per_epoch": run.steps_per_epoch, "epochs": run.epochs,
                        "per_phase": list(run.per_phase), "patience_epochs": run.patience},
             "logit_shift": [round(float(v), 6) for v in run.logit_shift],
             "host": describe_host(str(run.device))}
    if run.bn_report:
        extra["adapt_bn"] = {k: v for k, v in run.bn_report.items() if k != "per_layer"}
    if run.cache_seconds is not None:
        extra["feature_cache_seconds"] = run.cache_seconds
    if run.consistency is not None:
        c = run.consistency
        extra["consistency"] = {"unlabeled_maps": len(c.maps), "weight": c.weight, "threshold": c.threshold,
                                "ratio": c.ratio}
    spec = run.spec.replace(extra={**run.spec.extra, **{"train": extra}})
    save_model_dir(run.model, spec, out, history=st.history, config=run.cfg)
    total = sum(p.numel() for p in run.model.parameters())
    return TrainResult(
        model_dir=out, best_val=st.best_val, best_epoch=st.best_epoch, history=st.history,
        trainable_params=st.max_trainable, total_params=total, train_seconds=st.train_seconds,
        throughput_maps_per_s=st.maps_seen / st.train_seconds if st.train_seconds > 0 else 0.0, spec=spec,
        extra={"epoch_seconds": extra["epoch_seconds"], "feature_cache_seconds": extra.get("feature_cache_seconds"),
               "weights_source": spec.weights_source, "budget": extra["budget"]},
    )


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps of one epoch over ``n_train`` maps (the last, partial batch counts)."""
    return max(1, math.ceil(n_train / batch_size))


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


def _sched_state(sched) -> dict:
    return {k: v for k, v in sched.state_dict().items() if isinstance(v, (int, float, str, bool, list, tuple,
                                                                           type(None)))}


def _cpu_state(module: nn.Module) -> dict:
    """A copy of the module's state dict on the CPU (what the checkpoints hold)."""
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def _save(path: Path, obj) -> None:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
