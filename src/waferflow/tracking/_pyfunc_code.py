"""Model code of the registered raw-map pyfunc (MLflow "models from code").

MLflow copies this file into the logged model and runs it when the model is loaded, so the model is rebuilt from
code and its artifacts (ONNX + model.json) instead of being unpickled. It is never imported by the library.
"""

import mlflow

from waferflow.tracking.pyfunc import WaferMapClassifier

mlflow.models.set_model(WaferMapClassifier())
