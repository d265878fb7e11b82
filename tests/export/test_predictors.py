"""The table of model forms: ``create_predictor`` fails fast and clearly, and the forms agree."""

from __future__ import annotations

import numpy as np
import pytest

from waferflow.errors import ModelFormatError
from waferflow.predictors import BASE_FORMS, FORMS, create_predictor, form_file, predict_dataset


def test_the_table_names_every_form_and_its_file():
    assert BASE_FORMS == ("torch", "onnx_fp32", "onnx_int8", "onnx_fp32_tta", "onnx_int8_tta", "tensorrt_fp16",
                          "tensorrt_int8")
    assert {f: FORMS[f].file for f in BASE_FORMS} == {
        "torch": "weights.pt", "onnx_fp32": "model.onnx", "onnx_int8": "model.int8.onnx",
        "onnx_fp32_tta": "model.tta.onnx", "onnx_int8_tta": "model.int8.tta.onnx",
        "tensorrt_fp16": "model.fp16.engine", "tensorrt_int8": "model.int8.engine"}
    assert FORMS["tta"].file is None
    from waferflow.forms import EXPORT_FORMS, FORM_NAMES, TTA_OF, WEIGHTS_NAME
    from waferflow.models.spec import WEIGHTS_PT

    assert WEIGHTS_NAME == WEIGHTS_PT and FORM_NAMES == BASE_FORMS  # the import-free names match the table
    assert all(FORMS[f].file == name for f, name in EXPORT_FORMS.items())
    assert set(TTA_OF) | set(TTA_OF.values()) == set(EXPORT_FORMS)


def test_unknown_form_is_a_clear_error(tmp_path):
    with pytest.raises(ModelFormatError, match=r"unknown model form 'onnx_fp8'.*onnx_fp32"):
        create_predictor("onnx_fp8", tmp_path)
    with pytest.raises(ModelFormatError, match="wrapper"):
        create_predictor("tta", tmp_path)


@pytest.mark.parametrize("form, name", [("onnx_fp32", "model.onnx"), ("onnx_int8", "model.int8.onnx"),
                                        ("tensorrt_fp16", "model.fp16.engine"), ("torch", "weights.pt")])
def test_missing_file_is_a_clear_error_naming_it(tmp_path, form, name):
    with pytest.raises(ModelFormatError, match=rf"{form} needs .*{name.replace('.', '[.]')}, which does not exist"):
        create_predictor(form, tmp_path)


def test_onnx_fp32_agrees_with_torch_and_tta_wraps_any_form(tiny):
    test = tiny["test"].subset(np.arange(24))
    from waferflow.models import load_model_dir

    _, spec = load_model_dir(tiny["model_dir"])
    ref = predict_dataset(create_predictor("torch", tiny["model_dir"], threads=2), test, spec, 8)
    fp32 = predict_dataset(create_predictor("onnx_fp32", tiny["export_dir"], threads=1), test, spec, 8)
    assert (ref.argmax(1) == fp32.argmax(1)).all()
    np.testing.assert_allclose(fp32, ref, rtol=1e-3, atol=1e-4)
    # the file itself is accepted as the artifact too
    assert form_file("onnx_fp32", tiny["export_dir"] / "model.onnx") == tiny["export_dir"] / "model.onnx"
    tta = create_predictor("onnx_fp32", tiny["export_dir"], threads=1, tta=["hflip"])
    assert len(tta.views) == 2
    assert predict_dataset(tta, test, spec, 8).shape == ref.shape
