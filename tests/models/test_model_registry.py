"""Every registered model honours the contract training, Grad-CAM and serving rely on."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import pytest
import torch
from captum.attr import LayerGradCam

from mpoxscan.models import create_model, get_model_spec, list_models

#: Small inputs keep these tests fast on a shared CPU.
SMALL_SIZE = {"seed-cnn": 96, "vgg16": 32}
LITE_SIZE = 64
VGG16_FROZEN = [
    f"features.{i}.{kind}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19) for kind in ("weight", "bias")
]


@pytest.fixture(scope="module")
def small_model() -> Callable[[str, int], torch.nn.Module]:
    """Build each small model once per module; every test gets its own copy."""
    built: dict[tuple[str, int], torch.nn.Module] = {}

    def make(name: str, num_outputs: int) -> torch.nn.Module:
        if (name, num_outputs) not in built:
            size = SMALL_SIZE.get(name, LITE_SIZE)
            built[name, num_outputs] = create_model(
                name, num_outputs=num_outputs, pretrained=False, image_size=size
            )
        return copy.deepcopy(built[name, num_outputs])

    return make


def small_batch(model: torch.nn.Module, n: int = 2) -> torch.Tensor:
    size = model.preprocessing.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_registry_lists_the_documented_models() -> None:
    assert list_models() == [
        "efficientnet-lite0",
        "efficientnet-lite1",
        "efficientnet-lite2",
        "seed-cnn",
        "vgg16",
    ]


def test_unknown_name_raises_key_error_listing_valid_names() -> None:
    with pytest.raises(KeyError, match="vgg16") as info:
        create_model("resnet50", num_outputs=1)
    assert "resnet50" in str(info.value)
    with pytest.raises(KeyError, match="seed-cnn"):
        get_model_spec("vgg19")


@pytest.mark.parametrize("bad", [{"num_outputs": 0}, {"num_outputs": 1, "dropout": 1.0}])
def test_invalid_arguments_raise_value_error(bad: dict) -> None:
    with pytest.raises(ValueError):
        create_model("seed-cnn", pretrained=False, image_size=96, **bad)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("num_outputs", [1, 3])
def test_shapes_of_logits_features_and_embedding(name: str, num_outputs: int, small_model) -> None:
    model = small_model(name, num_outputs).eval()
    x = small_batch(model)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        embedding = model.embed(x)
    assert logits.shape == (2, num_outputs)
    assert features.ndim == 4 and features.shape[0] == 2
    assert embedding.shape == features.shape[:2]
    torch.testing.assert_close(embedding, features.mean(dim=(2, 3)))
    torch.testing.assert_close(model.forward_head(features), logits)
    assert model.architecture == name
    assert model.num_outputs == num_outputs


@pytest.mark.parametrize("name", list_models())
def test_preprocessing_follows_image_size_and_spec(name: str, small_model) -> None:
    model = small_model(name, 1)
    spec = get_model_spec(name)
    assert model.preprocessing.image_size == SMALL_SIZE.get(name, LITE_SIZE)
    assert (model.preprocessing.mean, model.preprocessing.std) == (
        spec.preprocessing.mean,
        spec.preprocessing.std,
    )


@pytest.mark.parametrize("name", list_models())
def test_cam_layer_output_is_the_feature_map_and_grad_cam_runs(name: str, small_model) -> None:
    model = small_model(name, 1).eval()
    x = small_batch(model)
    seen: list[torch.Tensor] = []
    handle = model.cam_layer.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    with torch.no_grad():
        features = model.forward_features(x)
    handle.remove()
    assert len(seen) == 1, "cam_layer must run exactly once per forward pass"
    torch.testing.assert_close(seen[0], features)
    cam = LayerGradCam(model, model.cam_layer).attribute(x, target=0)
    assert cam.shape == (2, 1, *features.shape[2:])


@pytest.mark.parametrize("name", list_models())
def test_one_optimizer_step_trains_trainable_weights_only(name: str, small_model) -> None:
    torch.manual_seed(0)
    model = small_model(name, 1).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == (VGG16_FROZEN if name == "vgg16" else [])
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        model(small_batch(model, n=4)).squeeze(1), torch.tensor([0.0, 1.0, 0.0, 1.0])
    )
    loss.backward()
    optimizer.step()
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == p.requires_grad, (
            f"{n}: requires_grad={p.requires_grad}, changed={changed}"
        )


@pytest.mark.parametrize("name", list_models())
def test_backbone_and_head_parameters_partition_the_model(name: str, small_model) -> None:
    model = small_model(name, 1)
    head = {id(p) for p in model.head_parameters()}
    backbone = {id(p) for p in model.backbone_parameters()}
    assert head and backbone and not head & backbone
    assert head | backbone == {id(p) for p in model.parameters()}
    last = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert id(last.weight) in head


def test_freeze_and_unfreeze_backbone(small_model) -> None:
    model = small_model("vgg16", 1)
    model.unfreeze_backbone()
    assert all(p.requires_grad for p in model.parameters())
    model.freeze_backbone()
    assert not any(p.requires_grad for p in model.backbone_parameters())
    assert all(p.requires_grad for p in model.head_parameters())
    model.freeze_backbone(trainable_from=model.default_trainable_from())
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == VGG16_FROZEN
    with pytest.raises(ValueError, match="features"):
        model.freeze_backbone(trainable_from="block4")


def test_dropout_lands_before_the_output_layer() -> None:
    model = create_model("seed-cnn", num_outputs=1, pretrained=False, image_size=96, dropout=0.3)
    dropouts = [m.p for m in model.head.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.3]
    lite = create_model(
        "efficientnet-lite0", num_outputs=1, pretrained=False, image_size=64, dropout=0.4
    )
    assert [m.p for m in lite.head.modules() if isinstance(m, torch.nn.Dropout)] == [0.4]


def test_seed_cnn_flatten_size_follows_image_size() -> None:
    native = create_model("seed-cnn", num_outputs=1)
    assert native.preprocessing.image_size == 224
    assert native.head[2].in_features == 5 * 5 * 32  # Keras: 224 -> ... -> 5x5x32
    create_model("seed-cnn", num_outputs=1, image_size=66)
    with pytest.raises(ValueError, match="at least 66"):
        create_model("seed-cnn", num_outputs=1, image_size=65)


def test_seed_cnn_rejects_a_weights_file(tmp_path) -> None:
    with pytest.raises(ValueError, match="import-keras"):
        create_model("seed-cnn", num_outputs=1, weights=tmp_path / "w.h5")


def test_vgg16_without_weights_warns_that_it_starts_random() -> None:
    with pytest.warns(UserWarning, match="--weights"):
        create_model("vgg16", num_outputs=1, image_size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create_model("vgg16", num_outputs=1, image_size=32, pretrained=False)


def test_vgg16_default_is_exactly_vgg16() -> None:
    model = create_model("vgg16", num_outputs=1, pretrained=False)
    convs = model.conv_layers()
    assert [c.out_channels for c in convs] == [
        64,
        64,
        128,
        128,
        256,
        256,
        256,
        512,
        512,
        512,
        512,
        512,
        512,
    ]
    assert sum(p.numel() for c in convs for p in c.parameters()) == 14_714_688  # Keras notop count
    assert model.head[2].in_features == 7 * 7 * 512
    with pytest.raises(ValueError, match="at least 32"):
        create_model("vgg16", num_outputs=1, pretrained=False, image_size=31)
