"""The model contract, generated from the registry: every registered variant runs the same cases
(as MONAI's case tables do), so a new variant is covered without writing a test file.

Cases: the forward shape, the input check, side outputs as declared, a save/load round trip,
``set_out_channels``, and tiled prediction equal to an untiled one (2D, "same" padding). The
end of the file adds a small example variant in one place (class + registration) and runs it
through the same cases.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from napari_unet.inference.predictor import Predictor, predict
from napari_unet.modelfile import load_model, make_config, save_model
from napari_unet.models import ModelSpec, SegmentationNet, available_models, build_model, get_spec, register
from napari_unet.models.blocks import DoubleConv, UpConv, head
from napari_unet.models.registry import _unregister

from _helpers import calibrate, randomise_batchnorm  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is as fast

#: Arguments a case needs beyond the tiny widths, per variant: Eff-UNet's squeeze-and-excitation
#: pools over the whole tile, so only without it is a tiled prediction exactly an untiled one.
TILE_INDEPENDENT = {"eff-unet": dict(se_ratio=0.0)}


def tiny(name: str, **arguments) -> SegmentationNet:
    """``name`` built small: three levels of 4, 8, 16 channels (per-level arguments such as
    ``strides`` cut to match), random but fixed weights, non-trivial batch-norm statistics."""
    defaults = get_spec(name).defaults
    small = {}
    if "features" in defaults:
        levels = min(3, len(defaults["features"]))
        small["features"] = tuple(4 * 2 ** i for i in range(levels))
        if defaults.get("strides") is not None:
            small["strides"] = list(defaults["strides"])[:levels - 1]
    torch.manual_seed(0)
    return randomise_batchnorm(build_model(name, **{**small, **arguments})).eval()


def input_shape(net: SegmentationNet) -> tuple[int, ...]:
    """A small accepted spatial shape, not square (axes mixed up would show)."""
    wanted = (24, 32) if net.spatial_dims == 2 else (6, 24, 32)
    return net.valid_input_shape(wanted)


# -- the cases, as functions so that the example variant below runs them too ----------------

def check_forward_shape(name: str) -> None:
    net = tiny(name, in_channels=2, out_channels=3)
    shape = input_shape(net)
    with torch.no_grad():
        y = net(torch.randn(2, 2, *shape))
    assert tuple(y.shape) == (2, 3, *net.output_shape(shape))


def check_input_is_checked(name: str) -> None:
    net = tiny(name)
    shape = input_shape(net)
    with pytest.raises(ValueError, match=r"Expected .*\(B, 1, .*with 1 channel\(s\)"):
        net(torch.randn(1, 2, *shape))
    with pytest.raises(ValueError, match="Expected"):
        net(torch.randn(1, 1, *shape[1:]))  # a spatial axis missing
    odd = shape[:-1] + (shape[-1] + 1,)
    if net.is_valid_input_shape(odd):  # a network that takes any size (the projection 2.5D U-Net)
        with torch.no_grad():
            assert tuple(net(torch.randn(1, 1, *odd)).shape[2:]) == net.output_shape(odd)
        return
    with pytest.raises(ValueError, match=r"Input size .*Pad or crop to") as info:
        net(torch.randn(1, 1, *odd))
    assert str(net.valid_input_shape(odd)) in str(info.value)  # says which size to use instead
    assert net.is_valid_input_shape(net.valid_input_shape(odd))


def check_side_outputs(name: str) -> None:
    spec, net = get_spec(name), tiny(name)
    assert spec.deep_supervision == type(net).deep_supervision
    assert spec.prunable == type(net).prunable and spec.has_classifier == type(net).has_classifier
    shape = input_shape(net)
    x = torch.randn(2, 1, *shape)
    with torch.no_grad():
        main, side = net(x), net(x, side_outputs=True)
    assert isinstance(side, list) and len(side) == len(net.side_output_names())
    assert (len(side) > 1) == spec.deep_supervision
    assert torch.equal(side[0], main)  # the main output first
    sizes = [math.prod(o.shape[2:]) for o in side]
    assert sizes == sorted(sizes, reverse=True)  # highest resolution first
    assert all(o.shape[:2] == main.shape[:2] for o in side)
    # supervision on and off both train: the input gets a gradient through every output
    net.train()
    for side_outputs in (False, True):
        x = torch.randn(2, 1, *shape, requires_grad=True)
        out = net(x, side_outputs=side_outputs)
        sum(o.square().mean() for o in (out if side_outputs else [out])).backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def check_round_trip(name: str, folder) -> None:
    net = tiny(name)
    loaded = load_model(save_model(folder / "model", net, make_config(net))).net
    assert type(loaded) is type(net) and loaded.config == net.config and loaded.architecture == name
    x = torch.randn(2, 1, *input_shape(net))
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))
        assert all(torch.equal(a, b) for a, b in zip(net(x, side_outputs=True), loaded(x, side_outputs=True)))


def head_prefixes(net: SegmentationNet, prefix: str = ""):
    """State-dict prefixes of the declared output heads (a sub-network's own heads, for one listed)."""
    for name in type(net).output_heads:
        module = net.get_submodule(name)
        if isinstance(module, SegmentationNet):
            yield from head_prefixes(module, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}."


def check_set_out_channels(name: str) -> None:
    net = tiny(name)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    heads = tuple(head_prefixes(net))
    assert heads, f"{name} declares no output heads"
    net.set_out_channels(3)
    after = net.state_dict()
    assert after.keys() == before.keys()  # model files keep their key names
    kept = [k for k, v in before.items() if not k.startswith(heads) and v.shape == after[k].shape]
    assert kept and all(torch.equal(before[k], after[k]) for k in kept)
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(heads))  # fresh heads
    assert net.out_channels == net.config["out_channels"] == 3
    rebuilt = type(net)(**net.config)
    rebuilt.load_state_dict(after)  # the config describes the changed network
    shape = input_shape(net)
    with torch.no_grad():
        assert tuple(net(torch.randn(1, 1, *shape)).shape) == (1, 3, *net.output_shape(shape))
    with pytest.raises(ValueError, match="at least 1"):
        net.set_out_channels(0)


def check_tiled_equals_untiled(name: str, folder) -> None:
    image = np.random.default_rng(0).normal(size=(150, 223)).astype(np.float32)
    # batch-norm statistics of this image: random ones make the output almost flat
    net = calibrate(tiny(name, **TILE_INDEPENDENT.get(name, {})), torch.from_numpy(image[:128, :128])[None, None])
    model = load_model(save_model(folder / "model", net, make_config(net, normalization={"kind": "none"})))
    halo = 64
    untiled = predict(model, image, predictor=Predictor(model, device="cpu", tile_size=1024, halo=halo, blend=8))
    assert untiled.tile_window[0] >= 150  # really one tile
    tiled_predictor = Predictor(model, device="cpu", tile_size=2 * halo + 32, halo=halo, blend=8)
    assert tiled_predictor.plan(image.shape).n_tiles > 2
    tiled = predict(model, image, predictor=tiled_predictor)
    assert untiled.probabilities.std() > 1e-2  # not a flat map that any tiling would reproduce
    np.testing.assert_allclose(tiled.probabilities, untiled.probabilities, rtol=0, atol=1e-4)
    # a declared classifier gives its object-present probability per tile; other networks none
    assert (tiled.object_probability is not None) == get_spec(name).has_classifier


# -- the table: every registered variant --------------------------------------------------------

NAMES = available_models()
TILED = [n for n in NAMES if get_spec(n).spatial_dims == 2 and not tiny(n).margin]


@pytest.mark.parametrize("name", NAMES)
def test_forward_gives_out_channels_and_the_output_shape(name):
    check_forward_shape(name)


@pytest.mark.parametrize("name", NAMES)
def test_inputs_the_network_cannot_take_are_refused_with_what_to_do(name):
    check_input_is_checked(name)


@pytest.mark.parametrize("name", NAMES)
def test_side_outputs_as_the_variant_declares(name):
    check_side_outputs(name)


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip_gives_the_same_outputs(name, tmp_path):
    check_round_trip(name, tmp_path)


@pytest.mark.parametrize("name", NAMES)
def test_set_out_channels_replaces_the_heads_and_keeps_the_rest(name):
    check_set_out_channels(name)


@pytest.mark.parametrize("name", TILED)
def test_tiled_prediction_equals_untiled(name, tmp_path):
    check_tiled_equals_untiled(name, tmp_path)


@pytest.mark.parametrize("name", [n for n in NAMES if get_spec(n).has_classifier])
def test_a_classifier_returns_its_probability_and_keeps_no_copy(name):
    net = tiny(name)
    x = torch.randn(3, 1, *input_shape(net))
    with torch.no_grad():
        out, prob = net(x, with_object_probability=True)
        side, prob_side = net(x, side_outputs=True, with_object_probability=True)
        assert torch.equal(out, net(x)) and torch.equal(side[0], out)
    assert prob.shape == (3,) and torch.equal(prob, prob_side) and ((prob >= 0) & (prob <= 1)).all()
    assert not any(isinstance(v, torch.Tensor) for v in vars(net).values())  # nothing stashed on the network


def test_the_registry_module_alone_registers_every_variant_once():
    code = "import napari_unet.models.registry as r; print(','.join(r.available_models()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().split(",") == NAMES
    assert len(NAMES) == len(set(NAMES)) >= 10


# -- adding a variant: one new file ---------------------------------------------------------------
# Everything a new 2D variant needs is below: its class (parts, ``output_heads``, ``forward``
# starting with ``check_input``) and its registration; the engine and the cases above do the rest.

class TwoLevelUNet(SegmentationNet):
    """A 2-level U-Net: ``(B, in_channels, H, W) -> (B, out_channels, H, W)``, H and W even."""

    output_heads = ("head",)

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
                 features=(4, 8), norm: str = "batch"):
        super().__init__()
        features = [int(f) for f in features]
        self.spatial_dims, self.in_channels, self.out_channels = spatial_dims, in_channels, out_channels
        self.config = dict(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                           features=features, norm=norm)
        self.encoder = DoubleConv(spatial_dims, in_channels, features[0], "same", norm)
        self.pool = (nn.MaxPool2d, nn.MaxPool3d)[spatial_dims - 2](2)
        self.bottom = DoubleConv(spatial_dims, features[0], features[1], "same", norm)
        self.up = UpConv(spatial_dims, features[1], features[0])
        self.decoder = DoubleConv(spatial_dims, 2 * features[0], features[0], "same", norm)
        self.head = head(spatial_dims, features[0], out_channels)
        self.size_divisor = (2,) * spatial_dims

    def forward(self, x: torch.Tensor, side_outputs: bool = False):
        self.check_input(x)
        skip = self.encoder(x)
        logits = self.head(self.decoder(torch.cat([skip, self.up(self.bottom(self.pool(skip)))], dim=1)))
        return [logits] if side_outputs else logits


EXAMPLE = "test-two-level-unet"


@pytest.fixture
def example_variant():
    """The example registered for one test (at the end of a variant's module this would be a plain
    ``register`` call), and removed after it."""
    register(ModelSpec(name=EXAMPLE, builder=TwoLevelUNet, title="Two-level U-Net (test)", spatial_dims=2,
                       defaults=dict(spatial_dims=2, features=(4, 8))))
    yield EXAMPLE
    _unregister(EXAMPLE)


def test_a_new_variant_in_one_file_goes_through_every_case(example_variant, tmp_path):
    assert example_variant in available_models()
    assert isinstance(build_model(example_variant), TwoLevelUNet)
    check_forward_shape(example_variant)
    check_input_is_checked(example_variant)
    check_side_outputs(example_variant)
    check_round_trip(example_variant, tmp_path)
    check_set_out_channels(example_variant)
    check_tiled_equals_untiled(example_variant, tmp_path)


def test_the_example_is_gone_after_its_test():
    assert EXAMPLE not in available_models()
