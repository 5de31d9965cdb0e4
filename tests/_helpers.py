"""Plain helpers shared by test files (``tests/`` is on the path through pyproject's pytest settings)."""

from __future__ import annotations

import pytest


def params(table):
    """``pytest.param`` per row ``(id, *values)`` of a test table (rows may be ``pytest.param`` with marks)."""
    out = []
    for case in table:
        if hasattr(case, "marks"):
            out.append(pytest.param(*case.values[1:], id=case.values[0], marks=case.marks))
        else:
            out.append(pytest.param(*case[1:], id=case[0]))
    return out


def blur_net(spatial_dims: int = 2):
    """A 3-level U-Net whose foreground probability is sigmoid(24 (blur(x) - 0.3)) of the
    normalised image x, blurred by four 3x3 (3x3x3 in 3D) box filters: nuclei become objects
    (touching ones merge, so the watershed split runs), and its receptive field (4 px) fits in the
    tiles' context, so tiled and block-wise predictions must equal a single pass up to rounding."""
    import torch

    from napari_unet.models import build_model

    torch.manual_seed(0)
    if spatial_dims == 2:
        net = build_model("unet", features=(8, 16, 32))
    else:
        net = build_model("unet-3d", features=(8, 16, 32), strides=[(1, 2, 2), (2, 2, 2)])
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.zero_()
                m.running_var.fill_(1 - m.eps)
                m.weight.fill_(1.0)
        for conv in (net.encoders[0][0][0], net.encoders[0][1][0], net.decoders[-1][0][0], net.decoders[-1][1][0]):
            conv.weight[0, 0] = 1 / 3 ** spatial_dims
        net.head.weight[(1, 0) + (0,) * spatial_dims] = 24.0
        net.head.bias[1] = -24.0 * 0.3
    return net


def randomise_batchnorm(net):
    """Non-trivial batch-norm statistics, so that folding them into the convolutions is exercised."""
    import torch

    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net


def calibrate(net, x):
    """Batch-norm statistics of ``x`` (random initial ones make the output almost constant)."""
    import torch

    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        net.train()(x)
    return net.eval()
