"""TrainConfig: the one frozen, validated config of the train stage.

Defaults are the measured local-profile recipe (tf_efficientnet_lite0, offline
ImageNet weights, 64 px, CPU). ``epochs``/``lr`` of 0 take the strategy's own
default (see :mod:`waferflow.train.strategies`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from waferflow.errors import ConfigError
from waferflow.predictors.runtime import SYMMETRIES  # one list: TTA checks its views against it too

LOSSES = ("ce", "focal")
CLASS_WEIGHTS = ("none", "sqrt", "inverse")
#: what decides the checkpoint a training keeps (``TrainConfig.checkpoint``)
CHECKPOINTS = ("macro_f1", "loss", "last")
DEVICES = ("auto", "cpu", "cuda")


#: the keys of a training budget: self-training's students do not take them from the run's train settings
BUDGET_KEYS = ("epochs", "steps", "min_epochs")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings.

    Attributes:
        backbone: timm backbone name (see ``waferflow.models.BACKBONES``).
        strategy: scratch | feature_extraction | full_finetune | gradual_unfreezing.
        pretrained: Weights source: auto | hub | offline | none | FILE | DIR | URL | models:/... | runs:/...
            (``scratch`` always starts from random init).
        input_size: Square input size in px; 0 = the backbone's own pretrained size.
        in_chans: 3 (replicate the map to RGB) or 1 (timm's stem adaptation).
        epochs: Total epochs over all phases; 0 = the strategy's default (or ``steps``).
        steps: Budget in optimizer steps of the phases that share the strategy's epochs (0 = use ``epochs``): they
            get ceil(steps / steps per epoch) epochs, so a few hundred maps and a hundred thousand get the same
            number of updates. Set either ``epochs`` or ``steps``.
        min_epochs: With ``steps``, a floor under the epochs that budget plans for those phases (0 = off), so a big
            dataset is not cut to a few passes by a budget sized for small ones (early stopping can still end a
            phase sooner); it changes nothing where ``steps`` already plans more epochs. Self-training's students
            keep their own budget (:data:`BUDGET_KEYS`).
        batch_size: Maps per step.
        lr: Peak learning rate of the head; 0 = the strategy's default. Lower groups get lr * lr_decay**depth.
        lr_decay: Discriminative LR factor per layer group, from the head down.
        optimizer: Any timm optimizer name (``create_optimizer_v2``), e.g. adamw, sgd.
        weight_decay: Weight decay (not applied to biases and norm weights).
        warmup_epochs: Linear warm-up length of each phase, in epochs (cosine decay after it).
        min_lr_ratio: Final LR as a fraction of the peak.
        loss: ce | focal.
        focal_gamma: Focal loss gamma.
        class_weights: none | sqrt | inverse (inverse class frequency, or its square root).
        label_smoothing: Label smoothing of the loss.
        mixup_alpha: Mixup (Zhang et al., 2018) in steps that run the whole model: each labeled batch is mixed with
            itself in another order, lam * x_i + (1 - lam) * x_j with one lam ~ Beta(alpha, alpha) per batch, and
            the loss is lam * loss(y_i) + (1 - lam) * loss(y_j) with the run's own loss and class weights; the
            draws come from the run's generator. Epochs that train only the head (cached or frozen features) do
            not mix (the log says so). The history's ``train_loss`` is then the mixed loss. 0 = off; e.g. 0.2.
        balanced_sampler: Sample training maps with probability inverse to their class frequency.
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth (timm's ``drop_path_rate``): the probability that a residual block is
            skipped for a training map rises with depth towards this rate; 0 = off. Inference is unchanged.
        augment: Batched, label-preserving augmentation on/off.
        symmetries: auto (from the taxonomy / WM-811K class names) | none | a comma list of
            hflip,vflip,rot90,rot180.
        die_noise: Fraction of wafer dies flipped pass<->fail per map.
        scale_jitter: Max relative zoom (nearest) of the map, e.g. 0.1 = 0.9..1.1.
        rotation: Max angle in degrees of a free rotation about the map's centre (nearest, off-wafer padding), on
            top of the symmetries: 45 with rot90 reaches every angle (0 = off). Only where rot90 is among the
            symmetries (classes that keep their label under any rotation, as WM-811K's); elsewhere it is off and
            the run says so.
        rotation_prob: Share of the maps that get the free rotation.
        ema_decay: Keep an exponential moving average of the weights (timm ``ModelEmaV3`` with warm-up, updated
            after every optimizer step); validation, early stopping, the best checkpoint and the saved model then
            judge and keep the average. 0 = off. Epochs that train only the head (on cached or frozen features)
            copy the model into the average at their end.
        unlabeled_weight: Weight of a FixMatch-style consistency loss on unlabeled maps passed to ``train``
            (``waferflow.train.consistency``; self-training's students get the pool). 0 = off.
        unlabeled_threshold: Confidence the model's prediction on a weak view of an unlabeled map must reach to be
            that map's target.
        unlabeled_ratio: Unlabeled maps per labeled map in each step.
        checkpoint: Which epoch's weights a training keeps, and what early stopping waits on: ``macro_f1`` (the
            highest validation macro-F1), ``loss`` (the lowest validation cross-entropy) or ``last`` (the last
            epoch's: no early stopping, the whole budget and its learning-rate decay run). With a few dozen
            validation maps macro-F1 moves by tenths between neighbouring epochs, and its maximum is partly noise;
            still, ``loss`` and ``last`` lost on 623-label development maps (docs/MEASUREMENTS.md, "Which checkpoint
            a training keeps").
        patience: Epochs without a gain of the ``checkpoint`` criterion before a phase ends early (0 = never).
        patience_steps: The same window in optimizer steps (0 = use ``patience``): ceil(patience_steps / steps
            per epoch) epochs, so early stopping waits as many updates on small data as on large.
        feature_cache: Feature extraction computes backbone features once and trains the head on them.
        adapt_bn: Re-estimate BN statistics on the training maps before training (pretrained strategies), so
            frozen-BN features and later train-mode BN agree; None = the strategy's own setting.
        seed: Seed of init, sampling and augmentation.
        device: auto | cpu | cuda (cuda without a CUDA device is an error, never a silent CPU run).
        amp: bf16 autocast on CUDA (on CPU, even with avx512_bf16, it trains Lite0 slower than FP32 channels-last).
        channels_last: channels-last memory format (oneDNN runs Lite0 about 2x faster so on CPU too).
        fast_depthwise_grad: On the CPU, depthwise convolutions whose output is smaller than their kernel compute
            their weight gradient offset by offset (``waferflow.models.dwgrad``; oneDNN is slow there): Lite0's
            training loop ran 1.59x faster at 64 px and 1.33x at 80 px on a 2-core AVX2 host
            (``benchmarks/bench_dwgrad.py``); not bit-identical to training without it (off to compare).
        keep_freed_memory: Keep freed tensor memory in the process (glibc's mmap and trim thresholds raised,
            ``waferflow.train.malloc``): fewer page faults, a faster CPU training loop (1.11x), about 6% more
            resident memory; process-wide from the first training that asks for it, numerically neutral.
        num_threads: CPU threads for torch (0 = all cores).
        val_fraction: Validation share when one file is given (stratified split).
        eval_batch_size: Batch size for validation / feature caching.
    """

    backbone: str = "tf_efficientnet_lite0"
    strategy: str = "gradual_unfreezing"
    pretrained: str = "auto"
    input_size: int = 64
    in_chans: int = 3
    epochs: int = 0
    steps: int = 0
    min_epochs: int = 0
    batch_size: int = 64
    lr: float = 0.0
    lr_decay: float = 0.7
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    warmup_epochs: float = 0.3
    min_lr_ratio: float = 0.02
    loss: str = "ce"
    focal_gamma: float = 2.0
    class_weights: str = "none"
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    balanced_sampler: bool = False
    drop_rate: float = 0.2
    drop_path_rate: float = 0.0
    augment: bool = True
    symmetries: str = "auto"
    die_noise: float = 0.01
    scale_jitter: float = 0.05
    rotation: float = 0.0
    rotation_prob: float = 0.5
    ema_decay: float = 0.0
    unlabeled_weight: float = 0.0
    unlabeled_threshold: float = 0.95
    unlabeled_ratio: int = 1
    checkpoint: str = "macro_f1"
    patience: int = 4
    patience_steps: int = 0
    feature_cache: bool = True
    adapt_bn: bool | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    fast_depthwise_grad: bool = True
    keep_freed_memory: bool = True
    num_threads: int = 0
    val_fraction: float = 0.15
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        from waferflow.models.backbones import check_backbone
        from waferflow.train.strategies import STRATEGIES

        check_backbone(self.backbone)
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        checks = [
            (self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}"),
            (self.checkpoint in CHECKPOINTS, f"checkpoint must be one of {CHECKPOINTS}, got {self.checkpoint!r}"),
            (self.class_weights in CLASS_WEIGHTS, f"class_weights must be one of {CLASS_WEIGHTS}, got {self.class_weights!r}"),
            (self.device in DEVICES, f"device must be one of {DEVICES}, got {self.device!r}"),
            (self.in_chans in (1, 3), f"in_chans must be 1 or 3, got {self.in_chans}"),
            (self.input_size == 0 or self.input_size >= 16, f"input_size must be 0 (pretrained size) or >= 16, got {self.input_size}"),
            (self.epochs >= 0, f"epochs must be >= 0, got {self.epochs}"),
            (self.steps >= 0, f"steps must be >= 0, got {self.steps}"),
            (not (self.steps and self.epochs), f"set either epochs ({self.epochs}) or steps ({self.steps}), not both"),
            (self.min_epochs >= 0, f"min_epochs must be >= 0 (0 = off), got {self.min_epochs}"),
            (0.0 <= self.drop_path_rate < 1.0, f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}"),
            (not self.min_epochs or self.steps, f"min_epochs={self.min_epochs} raises a step budget; set steps as "
                                                "well (or epochs alone, without min_epochs)"),
            (self.patience_steps >= 0, f"patience_steps must be >= 0, got {self.patience_steps}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr >= 0, f"lr must be >= 0, got {self.lr}"),
            (0 < self.lr_decay <= 1, f"lr_decay must be in (0, 1], got {self.lr_decay}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}"),
            (math.isfinite(self.mixup_alpha) and self.mixup_alpha >= 0,
             f"mixup_alpha must be a finite number >= 0 (0 = off; e.g. 0.2), got {self.mixup_alpha}"),
            (0 <= self.die_noise < 0.5, f"die_noise must be in [0, 0.5), got {self.die_noise}"),
            (0 <= self.scale_jitter < 0.5, f"scale_jitter must be in [0, 0.5), got {self.scale_jitter}"),
            (0 <= self.rotation <= 180, f"rotation must be in [0, 180] degrees, got {self.rotation}"),
            (0 <= self.rotation_prob <= 1, f"rotation_prob must be in [0, 1], got {self.rotation_prob}"),
            (0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1) (0 = off; e.g. 0.99), got {self.ema_decay}"),
            (self.unlabeled_weight >= 0, f"unlabeled_weight must be >= 0 (0 = off; e.g. 1.0), got {self.unlabeled_weight}"),
            (0 < self.unlabeled_threshold <= 1, f"unlabeled_threshold must be in (0, 1], got {self.unlabeled_threshold}"),
            (self.unlabeled_ratio >= 1, f"unlabeled_ratio must be >= 1, got {self.unlabeled_ratio}"),
            (0 < self.val_fraction < 0.9, f"val_fraction must be in (0, 0.9), got {self.val_fraction}"),
            (self.patience >= 0, f"patience must be >= 0, got {self.patience}"),
            (self.num_threads >= 0, f"num_threads must be >= 0, got {self.num_threads}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        parse_symmetries(self.symmetries)


def parse_symmetries(s: str) -> tuple[str, ...] | None:
    """``auto`` -> None (resolve from the data), ``none`` -> (), else a validated tuple."""
    s = s.strip()
    if s == "auto":
        return None
    if s in ("none", ""):
        return ()
    items = tuple(x.strip() for x in s.split(",") if x.strip())
    bad = [x for x in items if x not in SYMMETRIES]
    if bad:
        raise ConfigError(f"symmetries: unknown {bad}; use auto, none, or a comma list of {','.join(SYMMETRIES)}")
    return items
