"""Every bad input fails early with an error that names the problem and the way out."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from tiny_models import build
from torch import nn

from skipcollapse import SkipCollapseConfig


def test_unknown_source_layer_lists_close_names_and_blocks() -> None:
    with pytest.raises(ValueError, match=r"source_layer='bert\.encoder\.layers\.2' is not a module") as err:
        get_peft_model(build("hf-bert"), SkipCollapseConfig(source_layer="bert.encoder.layers.2"))
    assert "bert.encoder.layer.2" in str(err.value) and "index 0..3" in str(err.value)


def test_block_index_out_of_range_says_how_many_blocks() -> None:
    with pytest.raises(ValueError, match=r"source_layer=7 is out of range: this model has 4 blocks"):
        get_peft_model(build("hf-bert"), SkipCollapseConfig(source_layer=7))


def test_negative_index_counts_from_the_end() -> None:
    model = get_peft_model(build("hf-bert"), SkipCollapseConfig(source_layer=-1))
    assert model.peft_config["default"].source_layer == "bert.encoder.layer.3"


def test_unknown_head_lists_linear_layers() -> None:
    with pytest.raises(ValueError, match=r"head_module='clasifier' is not a module.*closest names: \['classifier'\]"):
        get_peft_model(build("hf-bert"), SkipCollapseConfig(head_module="clasifier"))


def test_head_that_is_not_linear() -> None:
    with pytest.raises(ValueError, match=r"is a Dropout, not the classifier's final nn.Linear"):
        get_peft_model(build("hf-bert"), SkipCollapseConfig(head_module="dropout"))


def test_source_block_that_is_the_head() -> None:
    with pytest.raises(ValueError, match="overlap: the skip must come from a block before the head"):
        get_peft_model(build("hf-bert"), SkipCollapseConfig(source_layer="classifier"))


def test_identity_projection_with_mismatched_widths() -> None:
    with pytest.raises(ValueError, match=r"projection='identity' needs equal widths.*gives 24 features.*takes 32"):
        get_peft_model(build("hf-resnet"), SkipCollapseConfig(projection="identity"))


def test_bad_choices_fail_at_config_time() -> None:
    with pytest.raises(ValueError, match=r"fusion='sum' is not one of \['add', 'concat', 'replace'\]"):
        SkipCollapseConfig(fusion="sum")
    with pytest.raises(ValueError, match="train_source"):
        SkipCollapseConfig(train_source="all")
    with pytest.raises(TypeError, match="source_layer must be"):
        SkipCollapseConfig(source_layer=1.5)


class _Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.body = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU())
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(self.stem(x)))


def test_unsupported_model_without_names_says_which_fields_to_set() -> None:
    with pytest.raises(
        ValueError,
        match=r"cannot find the blocks and the classifier head of _Custom"
        r".*set source_layer \(a module name\), head_module in",
    ):
        get_peft_model(_Custom(), SkipCollapseConfig())


def test_any_module_works_with_explicit_names() -> None:
    torch.manual_seed(0)
    base = _Custom()
    x = torch.randn(5, 4)
    expected = base(x)
    model = get_peft_model(base, SkipCollapseConfig(source_layer="body.0", head_module="fc", pooling="flatten"))
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    assert model.peft_config["default"].projection == "identity"


def test_adapter_refuses_a_different_base_architecture(tmp_path) -> None:
    get_peft_model(build("hf-bert"), SkipCollapseConfig()).save_pretrained(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"created for a BertForSequenceClassification, but the model is a RobertaForSequenceClassification",
    ):
        PeftModel.from_pretrained(build("hf-roberta"), tmp_path)


def test_head_running_without_its_source_is_an_error() -> None:
    model = get_peft_model(_Custom(), SkipCollapseConfig(source_layer="body.0", head_module="fc", pooling="flatten"))
    with pytest.raises(RuntimeError, match="without its source block's skip"):
        model.get_base_model().fc(torch.randn(2, 8))


def test_config_fields_are_checked_at_construction() -> None:
    assert SkipCollapseConfig(modules_to_save="pre_classifier").modules_to_save == ["pre_classifier"]
    for bad in ("64", 1.5, True, 0):
        with pytest.raises(ValueError, match="source_dim must be a positive integer"):
            SkipCollapseConfig(source_dim=bad)
    with pytest.raises(TypeError, match="head_module must be a module name"):
        SkipCollapseConfig(head_module=3)
    with pytest.raises(TypeError, match="modules_to_save must be module names"):
        SkipCollapseConfig(modules_to_save=["ok", 7])


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(num_labels=5), r"trained for 3 classes.*num_labels=3"),
        (
            dict(hidden_size=48, intermediate_size=64),
            r"trained on a BertForSequenceClassification where 'bert.encoder.layer.2' gave 32 features; "
            r"this model has 48 there",
        ),
        (
            dict(num_hidden_layers=2),
            r"trained on a BertForSequenceClassification where source_layer was 'bert.encoder.layer.2'; "
            r"this model has no such module. Load the adapter onto the base model it was trained on",
        ),
    ],
)
def test_loading_onto_another_base_names_the_mismatch(change: dict, message: str, tmp_path) -> None:
    from peft import PeftModel
    from transformers import BertConfig, BertForSequenceClassification

    get_peft_model(build("hf-bert"), SkipCollapseConfig()).save_pretrained(tmp_path)
    config = build("hf-bert").config.to_dict()
    config.pop("id2label", None), config.pop("label2id", None)
    config.update({"num_labels": 3, **change})
    other = BertForSequenceClassification(BertConfig(**config))
    with pytest.raises(ValueError, match=message):
        PeftModel.from_pretrained(other, tmp_path)


def test_a_pooling_that_does_not_fit_the_source_is_refused_at_creation() -> None:
    with pytest.raises(
        ValueError, match=r"pooling='cls' does not fit ResNet.*outputs \(2, 192, 10, 10\); use pooling='avg'"
    ):
        get_peft_model(build("timm-resnet"), SkipCollapseConfig(pooling="cls"))
    from conformance_models import ARCHS_BY_NAME

    with pytest.raises(
        ValueError,
        match=r"pooling='cls' does not fit LlamaForSequenceClassification: the head runs on "
        r"every token.*use pooling='per_token'",
    ):
        get_peft_model(ARCHS_BY_NAME["llama"].build(), SkipCollapseConfig(pooling="cls"))


def test_a_source_dim_that_does_not_match_the_block_is_refused_at_creation() -> None:
    with pytest.raises(
        ValueError,
        match=r"source_dim=7, but 'bert.encoder.layer.2' with pooling='cls' gives 32 "
        r"features \(measured with an example batch\); set source_dim=32",
    ):
        get_peft_model(build("hf-bert"), SkipCollapseConfig(source_dim=7))


def test_a_flatten_adapter_fed_another_input_size_says_to_feed_its_size() -> None:
    model = get_peft_model(build("timm-resnet"), SkipCollapseConfig(pooling="flatten", source_layer="layer4.0"))
    with pytest.raises(ValueError, match=r"feed inputs of the size the adapter was created and trained with"):
        model(torch.randn(1, 3, 64, 64))
