"""The champion's view of a batch: PCA of its penultimate embedding, confidence, entropy, predicted class."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from waferflow.config import atomic_write_bytes
from waferflow.data.contract import WaferDataset
from waferflow.errors import ModelFormatError
from waferflow.predictors import batches_for, features_and_logits

N_PCA = 8
PC_COLUMNS: tuple[str, ...] = tuple(f"emb_pc{i + 1}" for i in range(N_PCA))
MODEL_VIEW_NUMERIC: tuple[str, ...] = ("confidence", "entropy")
PRED_COLUMN = "pred_class"


@dataclass(frozen=True)
class EmbeddingPCA:
    """A PCA fitted on reference embeddings, stored as plain arrays (npz, never pickle)."""

    mean: np.ndarray  # [D]
    components: np.ndarray  # [k, D]
    explained_variance: np.ndarray  # [k]

    @classmethod
    def fit(cls, emb: np.ndarray, k: int = N_PCA, seed: int = 0) -> "EmbeddingPCA":
        """Fit ``k`` components on ``emb`` [N, D] (k is capped by N and D)."""
        from sklearn.decomposition import PCA

        k = int(min(k, emb.shape[0], emb.shape[1]))
        p = PCA(n_components=k, random_state=seed).fit(emb.astype(np.float64))
        return cls(p.mean_.astype(np.float64), p.components_.astype(np.float64),
                   p.explained_variance_.astype(np.float64))

    def transform(self, emb: np.ndarray) -> np.ndarray:
        """Project [N, D] embeddings onto the components: [N, k]."""
        if emb.shape[1] != self.mean.shape[0]:
            raise ModelFormatError(
                f"embedding width {emb.shape[1]} does not match the reference PCA ({self.mean.shape[0]}); "
                "the reference was built for another model. Rebuild it with `build_reference` for this champion"
            )
        return (emb.astype(np.float64) - self.mean) @ self.components.T

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (.npz, atomic)."""
        import io

        buf = io.BytesIO()
        np.savez(buf, mean=self.mean, components=self.components, explained_variance=self.explained_variance)
        return atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EmbeddingPCA":
        """Read a PCA written by :meth:`save` (no pickle)."""
        p = Path(path)
        if not p.is_file():
            raise ModelFormatError(f"reference PCA {p} is missing; rebuild the reference with `build_reference`")
        try:
            with np.load(p, allow_pickle=False) as z:
                return cls(z["mean"], z["components"], z["explained_variance"])
        except (KeyError, ValueError, OSError) as e:
            raise ModelFormatError(f"reference PCA {p} is unreadable ({e}); rebuild the reference") from None


def embed(model: Any, spec: Any, ds: WaferDataset, batch_size: int = 256,
          progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run the model over ``ds``; return (embeddings [N, D], softmax probabilities [N, K]).

    The model is put in eval mode and channels-last memory format, in place (its outputs change only by float rounding).
    """
    import torch

    embs, probs = [], []
    device = next(model.parameters()).device
    model.to(memory_format=torch.channels_last).eval()  # oneDNN: about 1.7x faster on the CPU, as in the predictors
    with torch.inference_mode():
        for _, x in batches_for(ds, spec, batch_size, desc="champion view", progress=progress):
            xt = torch.from_numpy(x).to(device).contiguous(memory_format=torch.channels_last)
            e, logits = features_and_logits(model, xt)
            embs.append(e.float().cpu().numpy())
            probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(embs), np.concatenate(probs)


def model_view(model: Any, spec: Any, ds: WaferDataset, pca: EmbeddingPCA | None = None,
               batch_size: int = 256) -> tuple[pd.DataFrame, EmbeddingPCA]:
    """The champion's view of every map.

    Args:
        model: The champion (a timm ``nn.Module``, eval mode).
        spec: Its ModelSpec (``input_size``, ``in_chans``, ``mean``, ``std``, ``class_names``).
        ds: The maps.
        pca: The reference PCA; when None, one is fitted on this batch (that is how the reference is built).
        batch_size: Inference batch size.

    Returns:
        (DataFrame with ``emb_pc1..k``, ``confidence``, ``entropy``, ``pred_class``; the PCA used).
    """
    emb, probs = embed(model, spec, ds, batch_size=batch_size)
    if pca is None:
        pca = EmbeddingPCA.fit(emb)
    pcs = pca.transform(emb)
    conf = probs.max(1)
    ent = -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(1)
    names = np.asarray(list(spec.class_names))
    df = pd.DataFrame(pcs, columns=[f"emb_pc{i + 1}" for i in range(pcs.shape[1])])
    df["confidence"] = conf
    df["entropy"] = ent
    df[PRED_COLUMN] = names[probs.argmax(1)]
    return df, pca
