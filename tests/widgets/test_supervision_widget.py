"""The Deep-supervision widget in a real viewer: every depth as a layer, scores, pruning, where to look."""

import numpy as np
import pytest
from qtpy.QtGui import QColor


def _wait(qtbot, widget, timeout=180_000):
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)
    qtbot.wait(50)  # layers are added one per turn of the event loop


def _depth_layers(viewer, prefix):
    return [layer for layer in viewer.layers if layer.name.startswith(prefix) and
            layer.metadata.get("napari_unet", {}).get("kind") == "depth"]


def test_unet_pp_and_unet_3p_depths_scores_pruning_and_next_region(supervision_widget, qtbot, click):
    viewer, widget = supervision_widget
    viewer.open_sample("napari-unet", "nuclei")
    image, truth = viewer.layers
    assert set(widget.model.choices) >= {"unet++", "unet3+"} and "unet" not in widget.model.choices
    widget.image.value = image
    widget.corrections.value = truth
    widget.model.value = "unet++"
    click(widget.run_button)
    assert widget.running
    _wait(qtbot, widget)

    prefix = "nuclei (synthetic) [unet++]"
    layers = _depth_layers(viewer, prefix)
    assert [layer.name for layer in layers] == [f"{prefix} X0,{k} (depth {k})" for k in (4, 3, 2, 1)] + \
        [f"{prefix} ensemble"]
    for layer in layers:
        assert layer.data.shape == image.data.shape and 0 <= layer.data.min() and layer.data.max() <= 1
    disagreement = viewer.layers[f"{prefix} disagreement"]
    assert disagreement.data.shape == image.data.shape
    assert disagreement.blending == "additive"  # black where the depths agree: the image shows through
    # the scores table: one row per depth and the ensemble, the best one highlighted
    table = widget.scores
    assert table.shape == (5, 3)
    best = widget.best_row
    assert table.native.item(best, 0).background().color() == QColor(60, 140, 60)
    assert table.native.verticalHeaderItem(best).text().startswith("★")
    aps = [row[1] for row in table.data]
    assert aps[best] == max(aps) and max(aps) > 0.6  # the bundled U-Net++ finds the sample's nuclei
    dice = [row[0] for row in table.data]
    assert all(0.5 < d <= 1 for d in dice)

    # flip through depths
    widget.show_depth.value = "X0,2 (depth 2)"
    assert [layer.visible for layer in layers] == [False, False, True, False, False]
    widget.show_depth.value = "all depths"
    assert all(layer.visible for layer in layers)
    widget.grid.value = True
    assert viewer.canvas.grid.enabled

    # where to look next: two clicks, two different blocks, camera on each
    click(widget.next_button)
    _wait(qtbot, widget)
    first = tuple(viewer.scene.camera.center[-2:])
    assert widget.status.value.startswith("region 1: disagreement")
    click(widget.next_button)
    _wait(qtbot, widget)
    assert widget.status.value.startswith("region 2:") and tuple(viewer.scene.camera.center[-2:]) != first
    assert all(0 <= c <= 512 for c in viewer.scene.camera.center[-2:])

    # the pruned sub-network: a labels layer and a row beside the full network's
    widget.prune_depth.value = 2
    click(widget.prune_button)
    _wait(qtbot, widget)
    assert list(widget.pruned.row_headers) == ["full", "depth 2"]
    full, pruned = widget.pruned.data
    assert pruned[2] == pytest.approx(dice[2], abs=1e-3)  # depth 2's Dice, the same as its side output's
    assert f"{prefix} depth 2 labels" in viewer.layers
    # another depth on the same image and corrections: one more row beside the same full run
    widget.prune_depth.value = 3
    click(widget.prune_button)
    _wait(qtbot, widget)
    assert list(widget.pruned.row_headers) == ["full", "depth 2", "depth 3"] and widget.pruned.data[0] == full
    # the corrections changed: the full network is scored again, and the table starts again from it
    edited = np.array(truth.data)
    edited[edited == edited.max()] = 0  # one object fewer: the full network's AP@0.5 changes
    truth.data = edited
    click(widget.prune_button)
    _wait(qtbot, widget)
    assert list(widget.pruned.row_headers) == ["full", "depth 3"]
    assert widget.pruned.data[0][3] != full[3]  # its AP@0.5

    # U-Net 3+: five levels and the classification-guided module's probability per tile
    n_layers = len(viewer.layers)
    widget.model.value = "unet3+"
    assert not widget.prune_button.enabled  # pruning is U-Net++'s
    click(widget.run_button)
    _wait(qtbot, widget)
    prefix = "nuclei (synthetic) [unet3+]"
    assert len(_depth_layers(viewer, prefix)) == 6
    present = viewer.layers[f"{prefix} object present (CGM)"]
    assert present.data.shape == image.data.shape and 0 <= present.data.min() <= present.data.max() <= 1
    assert len(viewer.layers) == n_layers + 8
    assert widget.scores.shape == (6, 3)
    assert "object present (CGM) per tile" in widget.status.value


def test_cancel_changes_nothing_and_bad_input_is_reported(supervision_widget, qtbot, click):
    viewer, widget = supervision_widget
    click(widget.run_button)  # no image yet
    assert not widget.running and "no image layer" in widget.status.value
    viewer.add_image(np.random.default_rng(0).random((700, 700)).astype(np.float32), name="noise")
    widget.model.value = "unet++"
    before = [layer.name for layer in viewer.layers]
    click(widget.run_button)
    click(widget.run_button)  # Cancel
    _wait(qtbot, widget)
    assert [layer.name for layer in viewer.layers] == before
    assert widget.status.value == "cancelled: nothing was changed"
    viewer.add_labels(np.zeros((100, 100), np.int32), name="other")
    widget.corrections.value = viewer.layers["other"]
    click(widget.run_button)
    assert not widget.running and "choose the corrections of this image" in widget.status.value
    click(widget.next_button)
    assert "Run all depths first" in widget.status.value


def test_the_corrections_follow_the_image(supervision_widget):
    """Choosing another image never leaves the previous image's corrections chosen: a score of one
    image against another's objects would be near 0 with a best row starred all the same."""
    viewer, widget = supervision_widget
    rng = np.random.default_rng(0)
    for name in ("img1", "img2"):
        viewer.add_image(rng.random((64, 64)).astype(np.float32), name=name)
        viewer.add_labels(np.zeros((64, 64), np.int32), name=f"{name} corrected",
                          metadata={"napari_unet": {"kind": "corrections", "source": name}})
    widget.image.value = viewer.layers["img2"]
    assert widget.corrections.value.name == "img2 corrected"
    widget.image.value = viewer.layers["img1"]
    assert widget.corrections.value.name == "img1 corrected"
    widget.corrections.value = viewer.layers["img2 corrected"]  # chosen by hand: refused at the run
    with pytest.raises(ValueError, match="corrects 'img2', not 'img1'"):
        widget._corrections_data((64, 64))
    viewer.layers.remove("img1 corrected")
    widget.image.value = viewer.layers["img2"]
    widget.image.value = viewer.layers["img1"]  # no corrections of its own: none rather than img2's
    assert widget.corrections.value is None


def test_the_corrections_are_hashed_in_the_worker(supervision_widget, qtbot, click, monkeypatch):
    """'Run pruned' hashes the corrections (up to 256 MB) in its worker, not on the Qt thread, and
    still runs the full network again only when they changed."""
    import threading
    from types import SimpleNamespace

    from napari_unet.inference import supervision
    from napari_unet.widgets import _supervision_review as review

    viewer, widget = supervision_widget
    image = viewer.add_image(np.random.default_rng(0).random((64, 64)).astype(np.float32), name="img")
    labels = np.zeros((64, 64), np.int32)
    labels[10:20, 10:20] = 1
    truth = viewer.add_labels(labels, name="img corrected",
                              metadata={"napari_unet": {"kind": "corrections", "source": "img"}})
    widget.image.value, widget.corrections.value, widget.model.value = image, truth, "unet++"
    on_main_thread, full_runs, hashed = [], [], review.checksum

    def recorded(data):
        on_main_thread.append(threading.current_thread() is threading.main_thread())
        return hashed(data)

    def compare(predictor, data, depth, *, with_full=True, **kwargs):  # no network: only what the dock asked
        yield from ()
        full_runs.append(with_full)
        run = [SimpleNamespace(depth=k, ms_per_megapixel=10.0 * (k or 4), prediction=SimpleNamespace(device="cpu"))
               for k in ([None, depth] if with_full else [depth])]
        return [(r, None) for r in run], np.zeros(data.shape, np.int32)

    monkeypatch.setattr(review, "checksum", recorded)
    monkeypatch.setattr(supervision, "compare_pruned_iter", compare)
    monkeypatch.setattr(type(widget), "_predictor", lambda self, *args: None)
    for depth in (2, 3):
        widget.prune_depth.value = depth
        click(widget.prune_button)
        _wait(qtbot, widget)
    assert full_runs == [True, False] and list(widget.pruned.row_headers) == ["full", "depth 2", "depth 3"]
    edited = np.array(truth.data)
    edited[15, 15] = 0
    truth.data = edited  # other corrections: the full network runs again, the table starts again
    click(widget.prune_button)
    _wait(qtbot, widget)
    assert full_runs == [True, False, True] and list(widget.pruned.row_headers) == ["full", "depth 3"]
    assert on_main_thread and not any(on_main_thread)
