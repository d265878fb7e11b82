"""An MLflow pyfunc that takes raw wafer maps (0/1/2, any size) and returns class names.

The registered model version is this pyfunc, so ``mlflow.pyfunc.load_model("models:/NAME@champion")`` and
``mlflow models serve`` accept the maps a fab has, without re-implementing preprocessing: each map goes through
the project's one :func:`waferflow.models.preprocess` (nearest resize to the model's input size, normalisation)
and then through the ONNX model of the deployment form. The ONNX FP32/INT8 forms stay logged beside it.

Over HTTP: ``POST /invocations`` with ``{"inputs": [map, map, ...]}``, each map a list of rows of 0/1/2; the answer
is ``{"predictions": ["Center", "none", ...]}``. Serving needs waferflow installed in the serving environment
(``--env-manager local``, or the component image). The model is logged as code (``_pyfunc_code.py``), so loading it
unpickles nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc

ONNX_ARTIFACT = "onnx_model"
SPEC_ARTIFACT = "model_json"
CODE_FILE = Path(__file__).with_name("_pyfunc_code.py")  # what MLflow runs to rebuild the model (models from code)


def _as_maps(model_input: Any) -> list:
    """A list of 2-D maps from a list of maps, a [N, H, W] array, one [H, W] map, or a DataFrame with ``map``."""
    import numpy as np

    if hasattr(model_input, "columns"):  # pandas DataFrame (e.g. a dataframe_split request)
        if "map" not in model_input.columns:
            raise ValueError("a DataFrame input needs a 'map' column holding one 2-D wafer map per row")
        model_input = list(model_input["map"])
    if isinstance(model_input, np.ndarray):
        model_input = [model_input] if model_input.ndim == 2 else list(model_input)
    if not isinstance(model_input, (list, tuple)) or not len(model_input):
        raise ValueError("send a non-empty list of wafer maps, each a 2-D list of 0/1/2 (0 off-wafer, 1 pass, 2 fail)")
    maps = []
    for i, m in enumerate(model_input):
        try:
            a = np.asarray(m if not isinstance(m, np.ndarray) or m.dtype != object else list(m), dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"map {i} is not a rectangular 2-D grid of numbers (ragged rows?)") from None
        if a.ndim != 2 or 0 in a.shape:
            raise ValueError(f"map {i} has shape {a.shape}; each map must be 2-D, e.g. [[0, 1, 1], [1, 2, 1]]")
        if not np.isin(a, (0, 1, 2)).all():
            bad = a[~np.isin(a, (0, 1, 2))].ravel()[0]
            raise ValueError(f"values must be 0/1/2; found {bad:g} in map {i}")
        maps.append(a.astype(np.uint8))
    return maps


class WaferMapClassifier(mlflow.pyfunc.PythonModel):
    """Raw 0/1/2 maps of any size -> class names, through ``preprocess`` and the ONNX model."""

    def load_context(self, context) -> None:
        import onnxruntime as ort

        from waferflow.models import ModelSpec
        from waferflow.predictors.runtime import maps_per_call

        self.spec = ModelSpec.from_dict(json.loads(Path(context.artifacts[SPEC_ARTIFACT]).read_text()))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(context.artifacts[ONNX_ARTIFACT], opts,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.chunk = maps_per_call(self.session)  # a TTA graph runs its views of every map inside it

    def predict(self, context, model_input: list[Any], params: dict[str, Any] | None = None) -> list[str]:
        """Class name of every map.

        Args:
            context: MLflow context (unused after loading).
            model_input: Wafer maps, each a 2-D list or array of 0/1/2, sizes may differ.
            params: Unused.

        Returns:
            One class name per map, in order.

        Raises:
            ValueError: A map is not 2-D or holds a value other than 0/1/2 (the message names it).
        """
        import numpy as np

        from waferflow.models import preprocess

        x = np.concatenate([preprocess(m, self.spec) for m in _as_maps(model_input)])
        logits = np.concatenate([self.session.run(None, {self.input_name: x[i:i + self.chunk]})[0]
                                 for i in range(0, len(x), self.chunk)])
        return [self.spec.class_names[int(k)] for k in logits.argmax(1)]


def example_maps(spec: dict) -> list[list[list[int]]]:
    """Two clean wafers (a disk of passing dies) of different sizes: the logged input example."""
    import numpy as np

    out = []
    for s in (max(int(spec["input_size"]) // 2, 8), int(spec["input_size"]) + 3):
        yy, xx = np.mgrid[:s, :s]
        r = (s - 1) / 2
        out.append(((yy - r) ** 2 + (xx - r) ** 2 <= (0.45 * s) ** 2).astype(int).tolist())
    return out
