import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from conftest import TINY, images  # noqa: E402

from compress.core import export  # noqa: E402
from compress.core.errors import UserError  # noqa: E402
from compress.core.onnxfile import metadata  # noqa: E402
from compress.core.session import Session  # noqa: E402


def test_export_is_checked_named_and_dynamic(tiny_onnx):
    proto = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 17
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert metadata(tiny_onnx)["compress.preprocess"] == "tiny"
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)  # folded into Conv


def test_parity_with_torch_at_several_batch_sizes(tiny_model, tiny_onnx, data_dirs):
    x = TINY.normalize(images(data_dirs["eval"]).pixels)
    result = export.parity(tiny_model, tiny_onnx, x)
    assert result["relative"] < 1e-4 and result["top1_agreement"] == 1.0
    session = Session(tiny_onnx)
    with torch.no_grad():
        for n in (1, 3, 17):
            np.testing.assert_allclose(session.infer(x[:n]), tiny_model(torch.from_numpy(x[:n])).numpy(),
                                       rtol=1e-4, atol=1e-4)


def test_parity_beyond_tolerance_is_an_error(tiny_model, tiny_onnx, data_dirs):
    import copy

    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        other.fc.bias += 1.0  # torch and ONNX now disagree
    x = TINY.normalize(images(data_dirs["eval"], 4).pixels)
    with pytest.raises(UserError, match="differs from torch") as err:
        export.parity(other, tiny_onnx, x)
    assert json.loads(str(err.value).split(": ", 2)[2].split(" (hint")[0])["max_abs_logit_diff"] > 0.5
