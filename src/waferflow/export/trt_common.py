"""What every part of the TensorRT path shares and can import without TensorRT: the skip reason, the CUDA
check and engine bytes (re-exported from ``waferflow.predictors.tensorrt``), INT8 calibration batches and cache.
``trt`` (the compile step) and ``tensorrt_build`` (CUDA-only) build on it; it imports neither of them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from waferflow.config import atomic_write_bytes
from waferflow.data.contract import WaferDataset
from waferflow.errors import ConfigError, DataError
from waferflow.predictors.tensorrt import cuda_status, load_engine_bytes  # noqa: F401  (re-exported)

log = logging.getLogger("waferflow.export.trt")

SKIP_NO_CUDA = "skipped: no CUDA device"


class CalibrationBatches:
    """Fixed-size float32 calibration batches [B, C, S, S] for a TensorRT calibrator.

    TensorRT asks for batches of exactly ``batch_size``; a short last batch is dropped (calibration statistics
    do not need it), so ``len(self)`` is ``n_maps // batch_size``.
    """

    def __init__(self, ds: WaferDataset, spec: Any, n_maps: int, batch_size: int = 32, seed: int = 0) -> None:
        from waferflow.export.quantize import calibration_indices

        if batch_size < 1:
            raise ConfigError(f"calibration batch size must be >= 1, got {batch_size}")
        self.ds, self.spec, self.batch_size = ds, spec, int(batch_size)
        self.indices = calibration_indices(ds, n_maps, seed)
        if len(self.indices) < batch_size:
            raise DataError(f"INT8 calibration needs at least one full batch of {batch_size} maps; "
                            f"got {len(self.indices)}; pass more calibration maps or a smaller batch")

    def __len__(self) -> int:
        return len(self.indices) // self.batch_size

    def __iter__(self) -> Iterator[np.ndarray]:
        from waferflow.predictors import batches_for

        usable = self.indices[: len(self) * self.batch_size]
        for _, x in batches_for(self.ds, self.spec, self.batch_size, indices=usable):
            yield x


class CalibrationCache:
    """The cache half of a TensorRT calibrator: reuse the cache file when present, write it atomically."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.cache_path = Path(path)

    def has_cache(self) -> bool:
        """A usable cache: the file exists and is non-empty (a crashed build can leave an empty one)."""
        return self.cache_path.is_file() and self.cache_path.stat().st_size > 0

    def read_calibration_cache(self) -> bytes | None:
        """The cached bytes when :meth:`has_cache` (TensorRT then skips calibration)."""
        if self.has_cache():
            log.info("reusing INT8 calibration cache %s", self.cache_path)
            return self.cache_path.read_bytes()
        return None

    def write_calibration_cache(self, cache: Any) -> None:
        """Save TensorRT's calibration table beside the engine."""
        atomic_write_bytes(self.cache_path, bytes(cache))
