"""Weights that cannot be wrong: a frozen backbone on real data needs a weight file (or ``random`` said on purpose),
and the file's layout (told by its key names) must agree with ``model.stride_in_1x1`` and ``data.pixel_format``."""
from __future__ import annotations

import pickle

import pytest
import torch

from relground.cli.main import main
from relground.config import load_config
from relground.engine.weights import check_backbone_weights
from relground.model.backbone import build_resnet
from relground.model.resnet_weights import detect_layout, read_weight_file
from tests.model.test_backbone import _to_caffe, _to_detectron2, _to_maskrcnn_benchmark

TORCHVISION_PIXELS = ["model.stride_in_1x1=false", "data.pixel_format=torchvision"]


@pytest.fixture(scope="module")
def resnet10_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v for k, v in build_resnet("resnet10", False).state_dict().items() if "num_batches" not in k}


@pytest.fixture(scope="module")
def weight_files(resnet10_state, tmp_path_factory) -> dict[str, str]:
    """One resnet10 file per naming convention, renamed by the tests' own (forward) renamings."""
    folder = tmp_path_factory.mktemp("weights")
    state = resnet10_state
    files = {
        "torchvision": ({**state, "fc.weight": torch.zeros(1000, 512)}, "tv.pth"),
        "detectron2": ({"model": {_to_detectron2(k): v for k, v in state.items()}}, "d2.pth"),
        "maskrcnn_benchmark": ({"model": {_to_maskrcnn_benchmark(k): v for k, v in state.items()}}, "mb.pth"),
        # detectron2's tools/convert-torchvision-to-d2.py: detectron2 names, torchvision's layout, said in __author__
        "d2_from_torchvision": ({"model": {_to_detectron2(k): v.numpy() for k, v in state.items()},
                                 "__author__": "torchvision", "matching_heuristics": True}, "d2tv.pkl"),
        "caffe": ({"blobs": {_to_caffe(k): v.numpy() for k, v in state.items() if _to_caffe(k)}}, "caffe.pkl"),
    }
    paths = {}
    for name, (content, filename) in files.items():
        path = folder / filename
        if filename.endswith(".pkl"):
            with path.open("wb") as f:
                pickle.dump(content, f)
        else:
            torch.save(content, path)
        paths[name] = str(path)
    return paths


@pytest.mark.parametrize("convention, expected", [
    ("torchvision", "torchvision"), ("detectron2", "msra"), ("maskrcnn_benchmark", "msra"),
    ("d2_from_torchvision", "torchvision"), ("caffe", "msra"),
])
def test_layout_is_told_by_the_key_names(weight_files, convention, expected):
    found = detect_layout(*read_weight_file(weight_files[convention]))
    assert found.name == expected
    assert (found.stride_in_1x1, found.pixel_format) == {
        "torchvision": (False, "torchvision"), "msra": (True, "caffe_bgr")}[expected]


def test_names_that_tell_nothing_give_no_layout():
    assert detect_layout({"encoder.weight": torch.zeros(1)}) is None


def test_real_data_with_a_frozen_backbone_and_no_weights_is_refused():
    with pytest.raises(ValueError, match=r"model\.backbone_weights is not set.*random features"):
        check_backbone_weights(load_config("flickr30k_reir.yaml"))
    with pytest.raises(ValueError, match=r"model\.backbone_weights"):
        check_backbone_weights(load_config("referit_reir.yaml"))
    # said on purpose, or nothing frozen, or the synthetic benchmark (whose config says random anyway): accepted
    check_backbone_weights(load_config("flickr30k_reir.yaml", ["model.backbone_weights=random"]))
    check_backbone_weights(load_config("flickr30k_reir.yaml", ["model.freeze_backbone=false"]))
    check_backbone_weights(load_config("synthetic.yaml", ["model.backbone_weights=null"]))
    assert load_config("synthetic.yaml").model.backbone_weights == "random"


def test_a_layout_mismatch_names_both_keys(weight_files):
    # flickr30k_reir.yaml says MSRA (stride in 1x1, Caffe BGR): a torchvision file does not fit it
    cfg = load_config("flickr30k_reir.yaml", [f"model.backbone_weights={weight_files['torchvision']}"])
    with pytest.raises(ValueError, match=r"torchvision ResNet.*model\.stride_in_1x1=false.*data\.pixel_format=torchvision"):
        check_backbone_weights(cfg)
    check_backbone_weights(load_config(  # the keys set as the file needs: accepted
        "flickr30k_reir.yaml", [f"model.backbone_weights={weight_files['torchvision']}", *TORCHVISION_PIXELS]))
    # only one key wrong: only that key named
    with pytest.raises(ValueError, match=r"needs data\.pixel_format=torchvision \(is caffe_bgr\)\. Set"):
        check_backbone_weights(load_config("flickr30k_reir.yaml", [
            f"model.backbone_weights={weight_files['torchvision']}", "model.stride_in_1x1=false"]))
    # the authors' detectron2-named weights fit the shipped config as it is; the torchvision keys do not
    for convention in ("detectron2", "caffe", "maskrcnn_benchmark"):
        check_backbone_weights(load_config("flickr30k_reir.yaml", [f"model.backbone_weights={weight_files[convention]}"]))
        with pytest.raises(ValueError, match=r"msra ResNet.*model\.stride_in_1x1=true.*data\.pixel_format=caffe_bgr"):
            check_backbone_weights(load_config(
                "flickr30k_reir.yaml", [f"model.backbone_weights={weight_files[convention]}", *TORCHVISION_PIXELS]))
    # the authors' own mix (MSRA weights, the stride on the 3x3 conv): refused under auto, taken as written when said
    authors_mix = [f"model.backbone_weights={weight_files['detectron2']}", "model.stride_in_1x1=false"]
    with pytest.raises(ValueError, match=r"msra ResNet.*needs model\.stride_in_1x1=true \(is false\)\. Set"):
        check_backbone_weights(load_config("flickr30k_reir.yaml", authors_mix))
    check_backbone_weights(load_config("flickr30k_reir.yaml", [*authors_mix, "model.backbone_layout=as_configured"]))
    check_backbone_weights(load_config("flickr30k_reir_authors.yaml", [authors_mix[0]]))
    # a Caffe ResNet in torchvision's names: model.backbone_layout says so
    check_backbone_weights(load_config(
        "flickr30k_reir.yaml", [f"model.backbone_weights={weight_files['torchvision']}", "model.backbone_layout=msra"]))


def test_missing_weight_file_is_named(tmp_path):
    cfg = load_config("flickr30k_reir.yaml", [f"model.backbone_weights={tmp_path / 'gone.pth'}"])
    with pytest.raises(FileNotFoundError, match=r"model\.backbone_weights: no such file: .*gone\.pth"):
        check_backbone_weights(cfg)


def test_train_refuses_before_writing_anything(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", "flickr30k_reir.yaml", "--output", str(run)]) == 2
    err = capsys.readouterr().err
    assert "model.backbone_weights is not set" in err and len(err.strip().splitlines()) == 1
    assert not run.exists()
