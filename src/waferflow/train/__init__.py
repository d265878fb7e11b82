"""Training: strategies as data, losses, augmentation, adaptive BN and the loop.

Public API: :class:`TrainConfig`, :func:`train` -> :class:`TrainResult`, :func:`adapt_bn`,
:data:`STRATEGIES`.
"""

from waferflow.train.adapt import adapt_bn
from waferflow.train.config import TrainConfig
from waferflow.train.loop import TrainResult, train
from waferflow.train.strategies import STRATEGIES, Phase, Strategy

__all__ = ["STRATEGIES", "Phase", "Strategy", "TrainConfig", "TrainResult", "adapt_bn", "train"]
