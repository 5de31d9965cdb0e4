"""The classic U-Net: shapes in both paddings, odd sizes, gradients, the registry."""

import pytest
import torch

from napari_unet.models import UNet, available_models, build_model, get_spec


def test_paper_geometry_valid_padding():
    net = UNet(features=(64, 128, 256, 512, 1024), padding="valid", norm="none")
    assert net.output_shape((572, 572)) == (388, 388)  # Ronneberger et al., Fig. 1
    assert net.margin == 92
    assert net.valid_input_shape((570, 570)) == (572, 572)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("size", [(64, 64), (48, 80), (100, 37)])
def test_forward_shapes_and_gradients(padding, size):
    torch.manual_seed(0)
    net = build_model("unet", features=(8, 16, 32), padding=padding, in_channels=2, out_channels=3)
    shape = net.valid_input_shape(size)
    assert all(s >= n for s, n in zip(shape, size))
    x = torch.randn(2, 2, *shape)
    y = net(x)
    assert y.shape == (2, 3, *net.output_shape(shape))
    if padding == "same":
        assert tuple(y.shape[2:]) == shape
    y.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_odd_sizes_are_rejected_with_a_message():
    net = build_model("unet", features=(8, 16, 32))
    with pytest.raises(ValueError, match="multiple of 4"):
        net.output_shape((63, 64))
    assert not net.is_valid_input_shape((63, 64))
    assert net.valid_input_shape((63, 1)) == (64, 4)


def test_side_outputs_is_a_list_highest_resolution_first():
    net = build_model("unet", features=(8, 16))
    out = net(torch.randn(1, 1, 32, 32), side_outputs=True)
    assert isinstance(out, list) and out[0].shape == (1, 2, 32, 32)


def test_3d_and_anisotropic_pooling():
    net = UNet(spatial_dims=3, features=(4, 8, 16), strides=[(1, 2, 2), (2, 2, 2)])
    assert net.size_divisor == (2, 4, 4)
    x = torch.randn(1, 1, 6, 16, 20)
    assert net(x).shape == (1, 2, 6, 16, 20)


def test_receptive_radius_bounds_the_true_one():
    torch.manual_seed(0)
    net = build_model("unet", features=(4, 8, 16), norm="none").double()
    r = net.receptive_radius[0]
    x = torch.zeros(1, 1, 160, 160, dtype=torch.float64, requires_grad=True)
    net(x)[0, 1, 80, 80].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(1)).flatten()
    assert 80 - rows.min().item() <= r and rows.max().item() - 80 <= r


def test_registry_lists_names_on_unknown_model():
    assert "unet" in available_models()
    with pytest.raises(KeyError, match="available models are .*unet"):
        get_spec("unet4")
    with pytest.raises(ValueError, match="Bad arguments"):
        build_model("unet", colour="blue")
    with pytest.raises(ValueError, match="padding"):
        build_model("unet", padding="reflect")


def test_set_out_channels_replaces_only_the_head():
    torch.manual_seed(0)
    net = build_model("unet", features=(4, 8))
    before = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("head.")}
    net.set_out_channels(3)
    after = net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert net(torch.randn(1, 1, 16, 16)).shape == (1, 3, 16, 16) and net.config["out_channels"] == 3
