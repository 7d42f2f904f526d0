import pytest

torch = pytest.importorskip("torch")

from compress.core import model as models  # noqa: E402
from compress.core.errors import UserError  # noqa: E402


@pytest.fixture()
def state_dict():
    return models.create("test-resnet", 4).state_dict()


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"model": sd},
    lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
])
def test_checkpoint_wrappers_load(tmp_path, state_dict, wrap):
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(state_dict), path)
    net = models.load("test-resnet", path)
    assert not net.training
    assert net.fc.out_features == 4  # num_classes comes from the checkpoint
    for k, v in net.state_dict().items():
        assert torch.equal(v, state_dict[k])


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "whole_model.pth"
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), path)  # a pickled nn.Module
    with pytest.raises(UserError, match="refusing to unpickle"):
        models.load("test-resnet", path)


def test_mismatch_names_keys_and_shapes(tmp_path, state_dict):
    state_dict["layer1.0.conv1.weight"] = torch.zeros(3, 16, 1, 1)
    del state_dict["layer2.1.bn3.bias"]
    state_dict["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state_dict, path)
    with pytest.raises(UserError) as err:
        models.load("test-resnet", path)
    text = str(err.value)
    assert "layer1.0.conv1.weight: checkpoint (3, 16, 1, 1) vs test-resnet (8, 16, 1, 1)" in text
    assert "missing layer2.1.bn3.bias" in text and "unexpected extra.weight" in text


def test_wrong_architecture_is_a_clear_error(tmp_path, state_dict):
    path = tmp_path / "tiny.pth"
    torch.save(state_dict, path)
    with pytest.raises(UserError, match="does not fit --arch resnet50"):
        models.load("resnet50", path)
    with pytest.raises(UserError, match="unknown architecture"):
        models.create("resnet51")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="not a readable torch checkpoint"):
        models.load_state_dict(path)
    with pytest.raises(UserError, match="checkpoint not found"):
        models.load_state_dict(tmp_path / "none.pth")


def test_resnet50_v1_moves_the_stride_to_conv1():
    v1, v15 = models.create("resnet50-v1"), models.create("resnet50")
    for name in ("layer2", "layer3", "layer4"):
        assert getattr(v1, name)[0].conv1.stride == (2, 2) and getattr(v1, name)[0].conv2.stride == (1, 1)
        assert getattr(v15, name)[0].conv1.stride == (1, 1) and getattr(v15, name)[0].conv2.stride == (2, 2)
    # Same parameter shapes, so one state_dict fits both; the outputs differ.
    assert {k: v.shape for k, v in v1.state_dict().items()} == {k: v.shape for k, v in v15.state_dict().items()}
    v15.load_state_dict(v1.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert v1.eval()(x).shape == (1, 1000)
        assert not torch.allclose(v1(x), v15.eval()(x))
