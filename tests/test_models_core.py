import pytest
import torch
from torch import nn

from shieldkit.models import create_model, load_model, require_batchnorm, save_model
from shieldkit.utils.io import atomic_torch_save, safe_torch_load


def test_normalisation_inside_and_features_contract():
    m = create_model("mnist_cnn", mean=[0.2], std=[0.5]).eval()
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(m(x), m.net((x - 0.2) / 0.5))
    assert torch.allclose(m.head(m.features(x)), m(x), atol=1e-6)


def test_save_load_roundtrip_is_exact(tmp_path, mnist_teacher):
    save_model(mnist_teacher, tmp_path / "t", note="x")
    assert (tmp_path / "t.safetensors").exists() and (tmp_path / "t.json").exists()
    m2 = load_model(tmp_path / "t")
    x = torch.rand(8, 1, 28, 28)
    assert torch.equal(mnist_teacher(x), m2(x))
    assert m2.card.extra["note"] == "x" and m2.card.dataset == "mnist5k"


def test_missing_weights_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="sidecar"):
        load_model(tmp_path / "absent")


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_untrusted_pickle_is_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, p)
    with pytest.raises(ValueError, match="weights_only"):
        safe_torch_load(p)
    atomic_torch_save(tmp_path / "ok.pt", {"w": torch.ones(2)})
    assert torch.equal(safe_torch_load(tmp_path / "ok.pt")["w"], torch.ones(2))


def test_model_without_batchnorm_is_refused():
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(ValueError, match="no BatchNorm"):
        require_batchnorm(net)
