"""Choosing among candidates: one name for a candidate, one ranking, always on validation metrics.

The pipeline's ``select_best`` stage and ``waferflow compare`` both use these, so a candidate has the same name
and the same rank wherever it is trained, and the test split is never read to choose.
"""

from __future__ import annotations

from typing import Mapping

from waferflow.errors import WaferflowError


INITS = ("imagenet", "source")


def candidate_name(strategy: str, backbone: str, init: str = "imagenet") -> str:
    """The name of a candidate: ``full_finetune-tf_efficientnet_lite0``, or ``full_finetune+source-...`` for one
    fine-tuned from the synthetic source model."""
    return f"{strategy}-{backbone}" if init == "imagenet" else f"{strategy}+{init}-{backbone}"


def choose_best(rows: Mapping[str, Mapping], key: str = "macro_f1") -> tuple[str, list[str]]:
    """Rank candidates by a validation metric (then accuracy, then name for a stable tie-break).

    Args:
        rows: candidate name -> validation metrics dict (``{"overall": {...}, ...}``).
        key: The ``overall`` metric to rank by.

    Returns:
        ``(best_name, ranked_names)``.

    Raises:
        WaferflowError: ``rows`` is empty.
    """
    if not rows:
        raise WaferflowError("no candidates to choose from: every train task failed or the candidate list is empty")
    ranked = sorted(rows, key=lambda n: (-float(rows[n]["overall"][key]), -float(rows[n]["overall"]["accuracy"]), n))
    return ranked[0], ranked
