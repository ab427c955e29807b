"""Every classifier architecture a user may bring, built tiny from configs, for the adapter's conformance test.

The adapter has to find "the middle block" of, hook into and fuse with whatever classifier a user hands it: a
transformers image classifier, an encoder or decoder text classifier, or a timm model. The conformance test runs
the same checks over every entry of `ARCHS`, so each entry here is that architecture in miniature: built from a
config (no hub, no download, no pretrained weights), randomly initialised with a fixed seed, in eval mode, with
`NUM_LABELS` outputs, small enough that building it takes well under a second and a forward on a batch of 4 well
under 100 ms on a CPU.

The tiny sizes are chosen so that shape-based logic cannot be right by accident:

* a channel/feature width never equals a spatial size or a sequence length at the same point of the network
  (no [B, 8, 8, 8] feature map, no [B, 64, 64] token tensor), so channels-first vs channels-last and
  tokens vs features cannot be confused;
* nothing else is 3 wide (`NUM_LABELS`): widths are 24/32/40/48/56/..., heads 1 or 2, 4+ blocks, text length 10;
* where an architecture allows it there are at least four blocks, so the middle block is a real intermediate one.

Images are 32x32 except where a model needs otherwise (`Arch.image_size`): LeViT (both libraries) 64 px, since its
stem divides by 16; transformers' MobileViT 64 px; and the timm models whose widths cannot be overridden, at the
size where no width equals a map size (28 px for EfficientNet-Lite0 and the MobileNets, 56 px for MobileViT).

Inputs come from `make_inputs`; `forward_logits` runs either kind of model on them (transformers models take the
dict as keywords, timm models the image tensor positionally: `model(inputs["pixel_values"])`). Text inputs are
right-padded; `Arch.pads_consistently` is False for the two models whose logits for a row change when the row is
right-padded (see the note at `ARCHS`): that is the plain model's behaviour, not something to fix in the adapter.

Every architecture of the required list builds tiny on the installed versions (transformers 5.24, timm 1.0.31);
configurations that these versions cannot build are noted where they would be.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import timm
import torch
from torch import nn

NUM_LABELS = 3
SEQ_LEN = 10  # text inputs: tokens per row
VOCAB = 96  # text vocabulary; ids 0-2 are kept for pad/bos/eos-like specials, inputs draw from [3, VOCAB)
MAX_POS = 64
KINDS = ("image", "text", "decoder", "timm")


@dataclass(frozen=True)
class Arch:
    """One architecture: `build()` returns the tiny model in eval mode; the other fields describe its inputs."""

    name: str
    kind: str  # "image" | "text" | "decoder" | "timm"
    build: Callable[[], nn.Module]
    image_size: int = 32  # image/timm kinds: the H = W the model was configured for
    vocab_size: int = VOCAB  # text/decoder kinds
    pad_token_id: int = 0  # text/decoder kinds: the config's pad id, used for padded positions
    # text/decoder kinds: whether the plain model gives a row the same logits alone as right-padded in a batch
    pads_consistently: bool = True

    @property
    def is_vision(self) -> bool:
        return self.kind in ("image", "timm")


def _seeded(fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """The builder with `torch.manual_seed(0)` first and `.eval()` last, so every call gives the same model."""

    def build() -> nn.Module:
        torch.manual_seed(0)
        return fn().eval()

    build.__name__ = build.__qualname__ = getattr(fn, "__name__", "build")
    return build


# ---------------------------------------------------------------------------------------------------------------
# transformers image classifiers (input `pixel_values`, 32x32 unless noted)
# ---------------------------------------------------------------------------------------------------------------

# ViT-like: 32 px in 4 px patches = 64 patch tokens (+ CLS / distillation / register tokens), width 32, MLP 80.
_VIT_KW = dict(
    image_size=32,
    patch_size=4,
    num_channels=3,
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=2,
    num_labels=NUM_LABELS,
)


def _vit():
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(intermediate_size=80, **_VIT_KW))


def _deit():
    from transformers import DeiTConfig, DeiTForImageClassification

    return DeiTForImageClassification(DeiTConfig(intermediate_size=80, **_VIT_KW))


def _beit():
    from transformers import BeitConfig, BeitForImageClassification

    config = BeitConfig(
        intermediate_size=80, use_relative_position_bias=True, use_mean_pooling=True, vocab_size=VOCAB, **_VIT_KW
    )
    return BeitForImageClassification(config)


def _dinov2():
    from transformers import Dinov2Config, Dinov2ForImageClassification

    return Dinov2ForImageClassification(Dinov2Config(mlp_ratio=3, **_VIT_KW))  # MLP 96


def _dinov2_registers():
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersForImageClassification

    config = Dinov2WithRegistersConfig(mlp_ratio=3, num_register_tokens=2, **_VIT_KW)
    return Dinov2WithRegistersForImageClassification(config)


# Swin: 2 px patches -> 16x16, 8x8, 4x4 token grids with widths 24, 48, 96; windows of 4x4 tokens, shifted in
# every 2nd block. Three stages, not four: a 2x2 last stage is smaller than the window, which transformers' Swin
# does not support (its relative position bias keeps the configured window: a size-mismatch error in attention),
# and SwinV2 would shrink its window to 2 (a 3x3 relative-coordinate table).
_SWIN_KW = dict(
    image_size=32,
    patch_size=2,
    num_channels=3,
    embed_dim=24,
    depths=[2, 2, 2],
    num_heads=[2, 2, 2],
    window_size=4,
    mlp_ratio=2.0,
    num_labels=NUM_LABELS,
)


def _swin():
    from transformers import SwinConfig, SwinForImageClassification

    return SwinForImageClassification(SwinConfig(**_SWIN_KW))


def _swinv2():
    from transformers import Swinv2Config, Swinv2ForImageClassification

    return Swinv2ForImageClassification(Swinv2Config(**_SWIN_KW))


# ConvNeXt: 2 px stem -> 16, 8, 4, 2 px stages with widths 24, 40, 48, 56.
_CONVNEXT_KW = dict(
    num_channels=3,
    patch_size=2,
    hidden_sizes=[24, 40, 48, 56],
    depths=[1, 1, 2, 1],
    image_size=32,
    num_labels=NUM_LABELS,
)


def _convnext():
    from transformers import ConvNextConfig, ConvNextForImageClassification

    return ConvNextForImageClassification(ConvNextConfig(**_CONVNEXT_KW))


def _convnextv2():
    from transformers import ConvNextV2Config, ConvNextV2ForImageClassification

    return ConvNextV2ForImageClassification(ConvNextV2Config(**_CONVNEXT_KW))


def _resnet():
    from transformers import ResNetConfig, ResNetForImageClassification

    # stem 24 @ 16 px, max-pool -> 8 px; bottleneck stages 48, 80, 96, 112 (inner 12, 20, 24, 28) @ 8, 4, 2, 1 px
    config = ResNetConfig(
        num_channels=3,
        embedding_size=24,
        hidden_sizes=[48, 80, 96, 112],
        depths=[1, 1, 2, 1],
        layer_type="bottleneck",
        num_labels=NUM_LABELS,
    )
    return ResNetForImageClassification(config)


def _regnet():
    from transformers import RegNetConfig, RegNetForImageClassification

    # stem 24 @ 16 px; Y-blocks (SE) 24, 48, 72, 96 @ 8, 4, 2, 1 px, groups of 8 channels
    config = RegNetConfig(
        num_channels=3,
        embedding_size=24,
        hidden_sizes=[24, 48, 72, 96],
        depths=[1, 1, 2, 1],
        groups_width=8,
        layer_type="y",
        num_labels=NUM_LABELS,
    )
    return RegNetForImageClassification(config)


def _efficientnet():
    from transformers import EfficientNetConfig, EfficientNetForImageClassification

    # stem 32 @ 16 px; MBConv blocks 24 @ 16, 40 @ 8, 48 x2 @ 4, 56 @ 2 px; head conv to 1280 (= hidden_dim,
    # which the width coefficient 1.0 fixes)
    config = EfficientNetConfig(
        num_channels=3,
        image_size=32,
        width_coefficient=1.0,
        depth_coefficient=1.0,
        kernel_sizes=[3, 3, 5, 3],
        in_channels=[32, 24, 40, 48],
        out_channels=[24, 40, 48, 56],
        strides=[1, 2, 2, 2],
        num_block_repeats=[1, 1, 2, 1],
        expand_ratios=[1, 6, 6, 6],
        hidden_dim=1280,
        num_labels=NUM_LABELS,
    )
    return EfficientNetForImageClassification(config)


def _mobilenet_v2():
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    # The 17 blocks are fixed; multiplier 0.5 rounded to multiples of 6 gives widths 18 (stem) @ 16 px, 8 @ 16,
    # 12 @ 8, 18 @ 4, 30 and 48 @ 2, 80 and 160 @ 1 px (none equal to a spatial size).
    config = MobileNetV2Config(
        num_channels=3,
        image_size=32,
        depth_multiplier=0.5,
        depth_divisible_by=6,
        finegrained_output=False,
        num_labels=NUM_LABELS,
    )
    return MobileNetV2ForImageClassification(config)


def _levit():
    from transformers import LevitConfig, LevitForImageClassification

    # LeViT's stem divides by 16, so 64 px: 4x4, 2x2, 1x1 token grids with widths 40, 56, 72 (32 px would leave
    # a 2x2 grid for the first stage and nothing to subsample).
    config = LevitConfig(
        image_size=64,
        num_channels=3,
        patch_size=16,
        hidden_sizes=[40, 56, 72],
        num_attention_heads=[2, 2, 2],
        depths=[2, 2, 2],
        key_dim=[8, 8, 8],
        mlp_ratio=[2, 2, 2],
        attention_ratio=[2, 2, 2],
        num_labels=NUM_LABELS,
    )
    return LevitForImageClassification(config)


def _hiera():
    from transformers import HieraConfig, HieraForImageClassification

    # 4 px patch stride -> 8x8 tokens, query pooling to 4x4, 2x2, 1x1; widths 24, 48, 96, 192
    config = HieraConfig(
        image_size=[32, 32],
        embed_dim=24,
        depths=[1, 1, 2, 1],
        num_heads=[1, 2, 2, 2],
        mlp_ratio=2.0,
        num_query_pool=3,
        masked_unit_size=[8, 8],
        num_labels=NUM_LABELS,
    )
    return HieraForImageClassification(config)


def _pvt_v2():
    from transformers import PvtV2Config, PvtV2ForImageClassification

    # overlapping patch embeddings /4, /2, /2, /2 -> 8x8, 4x4, 2x2, 1x1 with widths 24, 40, 48, 56
    config = PvtV2Config(
        image_size=32,
        num_channels=3,
        num_encoder_blocks=4,
        depths=[1, 1, 2, 1],
        sr_ratios=[8, 4, 2, 1],
        hidden_sizes=[24, 40, 48, 56],
        num_attention_heads=[1, 2, 2, 2],
        mlp_ratios=[2, 2, 2, 2],
        num_labels=NUM_LABELS,
    )
    return PvtV2ForImageClassification(config)


# beyond the list every adapter user is expected to bring: more image families, each a different code path


def _data2vec_vision():
    from transformers import Data2VecVisionConfig, Data2VecVisionForImageClassification

    config = Data2VecVisionConfig(
        intermediate_size=80, use_relative_position_bias=True, use_mean_pooling=True, **_VIT_KW
    )
    return Data2VecVisionForImageClassification(config)


def _mobilevit():
    from transformers import MobileViTConfig, MobileViTForImageClassification

    # stem /2 -> 32x32 at 64 px; conv widths 24, 40 @ 32, 48 @ 16, 56 @ 8, 72 @ 4, 88 @ 2, 160 (1x1 expansion);
    # transformer widths 48, 64, 80 over 2x2 patches. 64 px, not 32: at 32 the last stage is 1x1, smaller than a patch.
    config = MobileViTConfig(
        num_channels=3,
        image_size=64,
        patch_size=2,
        hidden_sizes=[48, 64, 80],
        neck_hidden_sizes=[24, 40, 48, 56, 72, 88, 160],
        num_attention_heads=2,
        expand_ratio=2.0,
        num_labels=NUM_LABELS,
    )
    return MobileViTForImageClassification(config)


def _mobilenet_v1():
    from transformers import MobileNetV1Config, MobileNetV1ForImageClassification

    # 13 fixed depthwise-separable blocks; x0.375: 12 (stem) and 24 @ 16 px, 48 @ 8, 96 @ 4, 192 @ 2, 384 @ 1
    config = MobileNetV1Config(num_channels=3, image_size=32, depth_multiplier=0.375, num_labels=NUM_LABELS)
    return MobileNetV1ForImageClassification(config)


def _bit():
    from transformers import BitConfig, BitForImageClassification

    # pre-activation bottlenecks with weight standardisation and group norm (4 groups), as the ResNet above
    config = BitConfig(
        num_channels=3,
        embedding_size=24,
        hidden_sizes=[48, 80, 96, 112],
        depths=[1, 1, 2, 1],
        layer_type="preactivation",
        num_groups=4,
        num_labels=NUM_LABELS,
    )
    return BitForImageClassification(config)


def _focalnet():
    from transformers import FocalNetConfig, FocalNetForImageClassification

    # 2 px patches -> 16, 8, 4, 2 px stages with widths 24, 48, 96, 192 (focal modulation instead of attention)
    config = FocalNetConfig(
        image_size=32,
        patch_size=2,
        num_channels=3,
        embed_dim=24,
        hidden_sizes=[48, 96, 192, 192],
        depths=[1, 1, 2, 1],
        focal_levels=[2, 2, 2, 2],
        focal_windows=[3, 3, 3, 3],
        mlp_ratio=2.0,
        drop_path_rate=0.0,
        num_labels=NUM_LABELS,
    )
    return FocalNetForImageClassification(config)


def _segformer():
    from transformers import SegformerConfig, SegformerForImageClassification

    # the Mix Transformer encoder, sized as the PVTv2 above
    config = SegformerConfig(
        num_channels=3,
        num_encoder_blocks=4,
        depths=[1, 1, 2, 1],
        sr_ratios=[8, 4, 2, 1],
        hidden_sizes=[24, 40, 48, 56],
        num_attention_heads=[1, 2, 2, 2],
        mlp_ratios=[2, 2, 2, 2],
        drop_path_rate=0.0,
        decoder_hidden_size=64,
        num_labels=NUM_LABELS,
    )
    return SegformerForImageClassification(config)


def _poolformer():
    from transformers import PoolFormerConfig, PoolFormerForImageClassification

    # patch embeddings /4, /2, /2, /2 -> 8, 4, 2, 1 px with widths 24, 40, 48, 56 (pooling as the token mixer)
    config = PoolFormerConfig(
        num_channels=3,
        hidden_sizes=[24, 40, 48, 56],
        depths=[1, 1, 2, 1],
        mlp_ratio=2.0,
        num_labels=NUM_LABELS,
    )
    return PoolFormerForImageClassification(config)


def _cvt():
    from transformers import CvtConfig, CvtForImageClassification

    # convolutional token embeddings /4, /2, /2 -> 8x8, 4x4, 2x2 tokens with widths 24, 48, 96; CLS in the last
    # stage. Stage i needs more than i layers (transformers' CvtStage indexes its drop-path list by stage), so 1, 2, 4.
    config = CvtConfig(
        num_channels=3,
        embed_dim=[24, 48, 96],
        num_heads=[1, 2, 2],
        depth=[1, 2, 4],
        mlp_ratio=[2.0, 2.0, 2.0],
        drop_path_rate=[0.0, 0.0, 0.0],
        num_labels=NUM_LABELS,
    )
    return CvtForImageClassification(config)


_TEXT_TOWER = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=80,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=MAX_POS,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
_VISION_TOWER = dict(
    image_size=32,
    patch_size=4,
    num_channels=3,
    hidden_size=32,
    intermediate_size=80,
    num_hidden_layers=4,
    num_attention_heads=2,
)


def _clip():
    from transformers import CLIPConfig, CLIPForImageClassification

    # only the vision tower is built; the (unused) text config is tiny too
    config = CLIPConfig(
        text_config=_TEXT_TOWER,
        vision_config=_VISION_TOWER,
        projection_dim=32,
        num_labels=NUM_LABELS,
    )
    return CLIPForImageClassification(config)


def _siglip():
    from transformers import SiglipConfig, SiglipForImageClassification

    config = SiglipConfig(text_config=_TEXT_TOWER, vision_config=_VISION_TOWER, num_labels=NUM_LABELS)
    return SiglipForImageClassification(config)


# ---------------------------------------------------------------------------------------------------------------
# transformers encoder text classifiers (inputs `input_ids`, `attention_mask`; 10 tokens)
# ---------------------------------------------------------------------------------------------------------------

_ENC_KW = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=2,
    intermediate_size=80,
    max_position_embeddings=MAX_POS,
    num_labels=NUM_LABELS,
)


def _bert():
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(pad_token_id=0, **_ENC_KW))


def _roberta():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    # RoBERTa counts positions from padding_idx + 1 = 2, hence the room in max_position_embeddings
    return RobertaForSequenceClassification(RobertaConfig(pad_token_id=1, bos_token_id=0, eos_token_id=2, **_ENC_KW))


def _xlm_roberta():
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    config = XLMRobertaConfig(pad_token_id=1, bos_token_id=0, eos_token_id=2, **_ENC_KW)
    return XLMRobertaForSequenceClassification(config)


def _distilbert():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(
        vocab_size=VOCAB,
        dim=32,
        n_layers=4,
        n_heads=2,
        hidden_dim=80,
        max_position_embeddings=MAX_POS,
        pad_token_id=0,
        num_labels=NUM_LABELS,
    )
    return DistilBertForSequenceClassification(config)


def _deberta():
    from transformers import DebertaConfig, DebertaForSequenceClassification

    # as microsoft/deberta-base: disentangled relative attention on top of absolute positions
    config = DebertaConfig(
        relative_attention=True, pos_att_type=["c2p", "p2c"], max_relative_positions=-1, pad_token_id=0, **_ENC_KW
    )
    return DebertaForSequenceClassification(config)


def _deberta_v2():
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    # as microsoft/deberta-v3-*: relative attention with log buckets, no absolute position embedding
    config = DebertaV2Config(
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        position_buckets=20,
        max_relative_positions=-1,
        norm_rel_ebd="layer_norm",
        pad_token_id=0,
        **_ENC_KW,
    )
    return DebertaV2ForSequenceClassification(config)


def _electra():
    from transformers import ElectraConfig, ElectraForSequenceClassification

    # embeddings 24 wide, projected to the 32-wide encoder
    return ElectraForSequenceClassification(ElectraConfig(embedding_size=24, pad_token_id=0, **_ENC_KW))


def _albert():
    from transformers import AlbertConfig, AlbertForSequenceClassification

    # ALBERT shares one layer's weights across its 4 layers (num_hidden_groups=1), as the released models do: there
    # is a single `albert_layer` module, called 4 times.
    config = AlbertConfig(embedding_size=24, num_hidden_groups=1, pad_token_id=0, **_ENC_KW)
    return AlbertForSequenceClassification(config)


def _mpnet():
    from transformers import MPNetConfig, MPNetForSequenceClassification

    # relative_attention_num_buckets stays 32: transformers' MPNet buckets positions into 32 whatever the config says
    config = MPNetConfig(pad_token_id=1, bos_token_id=0, eos_token_id=2, **_ENC_KW)
    return MPNetForSequenceClassification(config)


def _modernbert():
    from transformers import ModernBertConfig, ModernBertForSequenceClassification

    # alternating global / local (sliding window of 8) attention, every 2nd layer global
    config = ModernBertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=80,
        num_hidden_layers=4,
        num_attention_heads=2,
        max_position_embeddings=MAX_POS,
        global_attn_every_n_layers=2,
        local_attention=8,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
        num_labels=NUM_LABELS,
    )
    return ModernBertForSequenceClassification(config)


# beyond the required list


def _roformer():
    from transformers import RoFormerConfig, RoFormerForSequenceClassification

    return RoFormerForSequenceClassification(RoFormerConfig(embedding_size=32, pad_token_id=0, **_ENC_KW))


def _convbert():
    from transformers import ConvBertConfig, ConvBertForSequenceClassification

    # half the heads are span-based dynamic convolutions (head_ratio 2): 1 attention head + convolution
    config = ConvBertConfig(embedding_size=32, head_ratio=2, conv_kernel_size=5, pad_token_id=0, **_ENC_KW)
    return ConvBertForSequenceClassification(config)


def _mobilebert():
    from transformers import MobileBertConfig, MobileBertForSequenceClassification

    # 32-wide residual stream with 24-wide bottleneck blocks, trigram input embedding (24 -> 72 -> 32)
    config = MobileBertConfig(
        embedding_size=24, intra_bottleneck_size=24, num_feedforward_networks=2, pad_token_id=0, **_ENC_KW
    )
    return MobileBertForSequenceClassification(config)


def _funnel():
    from transformers import FunnelConfig, FunnelForSequenceClassification

    # two blocks of 2 layers; between them the sequence is mean-pooled 10 -> 5 tokens (CLS kept apart)
    config = FunnelConfig(
        vocab_size=VOCAB,
        block_sizes=[2, 2],
        d_model=32,
        n_head=2,
        d_head=16,
        d_inner=80,
        pad_token_id=0,
        num_labels=NUM_LABELS,
    )
    return FunnelForSequenceClassification(config)


def _xlnet():
    from transformers import XLNetConfig, XLNetForSequenceClassification

    # summary_type="last": classifies the last position, which is where XLNet's tokenizer puts <cls> (it pads on
    # the left). make_inputs pads on the right, so for padded rows it classifies a pad position (note at ARCHS).
    config = XLNetConfig(
        vocab_size=VOCAB,
        d_model=32,
        n_layer=4,
        n_head=2,
        d_inner=80,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        mem_len=None,
        num_labels=NUM_LABELS,
    )
    return XLNetForSequenceClassification(config)


def _longformer():
    from transformers import LongformerConfig, LongformerForSequenceClassification

    # local attention windows of 8 tokens (the input is padded to a multiple of 8 inside), global attention on CLS.
    # (BigBird is not listed: at 10 tokens its block-sparse attention falls back to full attention, i.e. BERT.)
    config = LongformerConfig(
        attention_window=8, pad_token_id=1, bos_token_id=0, eos_token_id=2, sep_token_id=2, **_ENC_KW
    )
    return LongformerForSequenceClassification(config)


# ---------------------------------------------------------------------------------------------------------------
# transformers decoder classifiers (`...ForSequenceClassification`: the last non-pad token's state is classified)
# ---------------------------------------------------------------------------------------------------------------

_DEC_KW = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=80,
    num_hidden_layers=4,
    num_attention_heads=2,
    max_position_embeddings=MAX_POS,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    num_labels=NUM_LABELS,
)
_GQA = dict(num_key_value_heads=1)  # 2 query heads share 1 key/value head


def _llama():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    return LlamaForSequenceClassification(LlamaConfig(**_GQA, **_DEC_KW))


def _qwen2():
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    return Qwen2ForSequenceClassification(Qwen2Config(**_GQA, **_DEC_KW))


def _qwen3():
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    return Qwen3ForSequenceClassification(Qwen3Config(head_dim=16, **_GQA, **_DEC_KW))


def _mistral():
    from transformers import MistralConfig, MistralForSequenceClassification

    return MistralForSequenceClassification(MistralConfig(head_dim=16, **_GQA, **_DEC_KW))


def _gemma():
    from transformers import GemmaConfig, GemmaForSequenceClassification

    return GemmaForSequenceClassification(GemmaConfig(head_dim=16, **_GQA, **_DEC_KW))


def _gemma2():
    from transformers import Gemma2Config, Gemma2ForSequenceClassification

    # alternating sliding-window (8 tokens) / global layers, attention-logit soft-capping as released
    config = Gemma2Config(head_dim=16, query_pre_attn_scalar=16, sliding_window=8, **_GQA, **_DEC_KW)
    return Gemma2ForSequenceClassification(config)


def _phi3():
    from transformers import Phi3Config, Phi3ForSequenceClassification

    config = Phi3Config(original_max_position_embeddings=MAX_POS, **_GQA, **_DEC_KW)
    return Phi3ForSequenceClassification(config)


def _gpt2():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=MAX_POS,
        n_embd=32,
        n_layer=4,
        n_head=2,
        n_inner=80,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        num_labels=NUM_LABELS,
    )
    return GPT2ForSequenceClassification(config)


def _gpt_neox():
    from transformers import GPTNeoXConfig, GPTNeoXForSequenceClassification

    return GPTNeoXForSequenceClassification(GPTNeoXConfig(**_DEC_KW))


# beyond the required list


def _opt():
    from transformers import OPTConfig, OPTForSequenceClassification

    config = OPTConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=4,
        ffn_dim=80,
        num_attention_heads=2,
        max_position_embeddings=MAX_POS,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        num_labels=NUM_LABELS,
    )
    return OPTForSequenceClassification(config)


def _phi():
    from transformers import PhiConfig, PhiForSequenceClassification

    # parallel attention + MLP, partial rotary embedding
    return PhiForSequenceClassification(PhiConfig(**_DEC_KW))


def _falcon():
    from transformers import FalconConfig, FalconForSequenceClassification

    # the new decoder architecture (Falcon 40B/180B-style: grouped KV heads, parallel attention)
    config = FalconConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_kv_heads=1,
        new_decoder_architecture=True,
        ffn_hidden_size=80,
        max_position_embeddings=MAX_POS,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        num_labels=NUM_LABELS,
    )
    return FalconForSequenceClassification(config)


def _bloom():
    from transformers import BloomConfig, BloomForSequenceClassification

    # ALiBi position biases, no position embedding
    config = BloomConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        n_layer=4,
        n_head=2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        num_labels=NUM_LABELS,
    )
    return BloomForSequenceClassification(config)


def _gptj():
    from transformers import GPTJConfig, GPTJForSequenceClassification

    config = GPTJConfig(
        vocab_size=VOCAB,
        n_positions=MAX_POS,
        n_embd=32,
        n_layer=4,
        n_head=2,
        rotary_dim=8,
        n_inner=80,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        num_labels=NUM_LABELS,
    )
    return GPTJForSequenceClassification(config)


def _stablelm():
    from transformers import StableLmConfig, StableLmForSequenceClassification

    return StableLmForSequenceClassification(StableLmConfig(**_GQA, **_DEC_KW))


def _qwen3_moe():
    from transformers import Qwen3MoeConfig, Qwen3MoeForSequenceClassification

    # every MLP a mixture of 8 experts (24 wide), 2 per token
    config = Qwen3MoeConfig(
        head_dim=16, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=24, **_GQA, **_DEC_KW
    )
    return Qwen3MoeForSequenceClassification(config)


def _mixtral():
    from transformers import MixtralConfig, MixtralForSequenceClassification

    config = MixtralConfig(head_dim=16, num_local_experts=8, num_experts_per_tok=2, **_GQA, **_DEC_KW)
    return MixtralForSequenceClassification(config)


def _olmo2():
    from transformers import Olmo2Config, Olmo2ForSequenceClassification

    return Olmo2ForSequenceClassification(Olmo2Config(**_GQA, **_DEC_KW))


def _gemma3_text():
    from transformers import Gemma3TextConfig, Gemma3TextForSequenceClassification

    # 5 sliding-window layers per global one as released; with 4 layers all 4 are sliding-window (8 tokens)
    config = Gemma3TextConfig(head_dim=16, query_pre_attn_scalar=16, sliding_window=8, **_GQA, **_DEC_KW)
    return Gemma3TextForSequenceClassification(config)


def _smollm3():
    from transformers import SmolLM3Config, SmolLM3ForSequenceClassification

    # no rotary embedding in every 4th layer (NoPE), as released
    return SmolLM3ForSequenceClassification(SmolLM3Config(**_GQA, **_DEC_KW))


def _gpt_bigcode():
    from transformers import GPTBigCodeConfig, GPTBigCodeForSequenceClassification

    # StarCoder's multi-query attention
    config = GPTBigCodeConfig(
        vocab_size=VOCAB,
        n_positions=MAX_POS,
        n_embd=32,
        n_layer=4,
        n_head=2,
        n_inner=80,
        multi_query=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        num_labels=NUM_LABELS,
    )
    return GPTBigCodeForSequenceClassification(config)


def _gpt_oss():
    from transformers import GptOssConfig, GptOssForSequenceClassification

    # attention sinks, alternating sliding-window (8) / full layers, 8 experts with 2 per token
    # YaRN rope as released, rescaled so that original x factor = max_position_embeddings
    rope = dict(
        rope_type="yarn",
        factor=2.0,
        beta_fast=32.0,
        beta_slow=1.0,
        truncate=False,
        original_max_position_embeddings=MAX_POS // 2,
        rope_theta=150000.0,
    )
    config = GptOssConfig(
        head_dim=16,
        num_local_experts=8,
        num_experts_per_tok=2,
        sliding_window=8,
        rope_parameters=rope,
        **_GQA,
        **_DEC_KW,
    )
    return GptOssForSequenceClassification(config)


# ---------------------------------------------------------------------------------------------------------------
# timm classifiers: timm.create_model(name, pretrained=False, num_classes=3, **small kwargs)
# ---------------------------------------------------------------------------------------------------------------


def _timm(name: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return timm.create_model(name, pretrained=False, num_classes=NUM_LABELS, **kwargs)

    build.__name__ = f"timm_{name}"
    return build


# (entry name after "timm-", timm model name, create_model kwargs, image size). The EfficientNet-Lite0 and MobileNet
# generators fix their width multiplier (passing it again is an error) and at 32 px their 16-channel stages would
# sit on 16x16 maps ([B, 16, 16, 16]), or 8 channels on 8x8; at 28 px the maps are 14, 7, 4, 2, 1 wide, which no
# width equals.
_TIMM = [
    # deep-tiered stem 18, 24, 48 @ 16 px; basic-block stages 24, 40, 48, 56 @ 8, 4, 2, 1 px
    ("resnet10t", "resnet10t", dict(stem_width=24, channels=(24, 40, 48, 56)), 32),
    ("efficientnet_lite0", "efficientnet_lite0", dict(), 28),
    # 4 px patches -> 64 tokens + CLS, width 48, MLP 192
    ("vit", "vit_tiny_patch16_224", dict(img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=2), 32),
    # stem /4 -> 8, 4, 2, 1 px stages with widths 24, 40, 48, 56
    ("convnext_atto", "convnext_atto", dict(depths=(1, 1, 2, 1), dims=(24, 40, 48, 56)), 32),
    ("mobilenetv3_small_050", "mobilenetv3_small_050", dict(), 28),
    ("mobilenetv2_050", "mobilenetv2_050", dict(), 28),
    # as released (13 blocks): stem 32 @ 16 px, stages 24, 56, 152, 368 @ 8, 4, 2, 1 px
    ("regnetx_002", "regnetx_002", dict(), 32),
    # 4 px patches -> 64 tokens + CLS, width 48, rotary position embedding on the 8x8 grid, SwiGLU MLP
    (
        "eva02",
        "eva02_tiny_patch14_224",
        dict(img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=2, ref_feat_shape=(8, 8)),
        32,
    ),
    # as the transformers Swin above (3 stages 24, 48, 96 @ 16, 8, 4), in timm's channels-last layout
    (
        "swin",
        "swin_tiny_patch4_window7_224",
        dict(img_size=32, patch_size=2, window_size=4, embed_dim=24, depths=(2, 2, 2), num_heads=(2, 2, 2)),
        32,
    ),
    # stem /4 -> RepMixer stages 24, 48, 96, 192 @ 8, 4, 2, 1 px (its grouped downsampling convs need each width
    # to be a multiple of the previous one)
    ("fastvit_t8", "fastvit_t8", dict(layers=(1, 1, 2, 1), embed_dims=(24, 48, 96, 192)), 32),
    # beyond the required list
    # DeiT with its distillation token and head (eval averages the two heads)
    (
        "deit-distilled",
        "deit_tiny_distilled_patch16_224",
        dict(img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=2),
        32,
    ),
    # ViT without a class token, average-pooled (as vit_*_gap and many SigLIP-style timm models)
    (
        "vit-gap",
        "vit_tiny_patch16_224",
        dict(img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=2, class_token=False, global_pool="avg"),
        32,
    ),
    # ViT with 2 register tokens
    (
        "vit-reg",
        "vit_tiny_patch16_224",
        dict(img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=2, reg_tokens=2),
        32,
    ),
    ("convnextv2_atto", "convnextv2_atto", dict(depths=(1, 1, 2, 1), dims=(24, 40, 48, 56)), 32),
    # bottleneck ResNet-D: deep stem 24, 24, 48 @ 16 px; stages 96, 160, 192, 224 (inner 24, 40, 48, 56)
    ("resnet50d", "resnet50d", dict(layers=(1, 1, 2, 1), stem_width=24, channels=(24, 40, 48, 56)), 32),
    # as released: stem 32 @ 16 px, SE stages 24, 56, 152, 368 @ 8, 4, 2, 1 px
    ("regnety_002", "regnety_002", dict(), 32),
    # as released (its widths cannot be overridden), at 56 px: 32 px would put 16 channels on 16x16 maps, 64 px 32
    # on 32x32; at 56 the maps are 28, 14, 7, 4, 2 wide (MobileViT blocks at 7 -> unfolded as 8, 4, 2)
    ("mobilevit_xxs", "mobilevit_xxs", dict(), 56),
    # stem 8 @ 16 px, stages 16, 32, 64, 128 @ 8, 4, 2, 1 px, linear attention in the last two; head 160, 192 wide
    ("efficientvit_b0", "efficientvit_b0", dict(head_widths=(160, 192)), 32),
    # at 64 px (stem /16): 4x4, 2x2, 1x1 tokens with widths 40, 56, 72
    (
        "levit_128s",
        "levit_128s",
        dict(img_size=64, embed_dim=(40, 56, 72), key_dim=8, num_heads=(2, 2, 2), depth=(2, 2, 2)),
        64,
    ),
    # stem /4 -> 8, 4, 2, 1 px with widths 24, 40, 48, 56 (MBConv first stage, windowed attention after)
    (
        "tiny_vit_5m_224",
        "tiny_vit_5m_224",
        dict(embed_dims=(24, 40, 48, 56), depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 2), window_sizes=(4, 4, 2, 1)),
        32,
    ),
    # 4 px patch stride -> 8x8 tokens, query-pooled to 4x4, 2x2, 1x1; widths 24, 48, 96, 192
    ("hiera_tiny_224", "hiera_tiny_224", dict(img_size=32, embed_dim=24, num_heads=1, stages=(1, 1, 2, 1)), 32),
    # stem /4 -> 8, 4, 2, 1 px with widths 24, 48, 96, 192
    ("repvit_m0_9", "repvit_m0_9", dict(embed_dim=(24, 48, 96, 192), depth=(1, 1, 2, 1)), 32),
]


# Right padding, plain models (a row alone vs the same row with trailing pads in a batch, atol 1e-5): every text
# and decoder entry agrees to ~1e-7 except two, marked pads_consistently=False:
# * funnel: its poolings average pairs of positions over the (padded) sequence length and truncate_seq drops the
#   last position, so for rows of some lengths (7 of 10 here; with truncate_seq=False, 6) the last real token is
#   dropped alone but averaged with a pad in the batch, or the reverse (~1e-2 to 7e-2);
# * xlnet: summary_type="last" classifies the last position, a pad in a right-padded row (~1e-2); left padding, as
#   XLNet's tokenizer does, agrees.
ARCHS: list[Arch] = [
    # transformers image classifiers
    Arch("vit", "image", _seeded(_vit)),
    Arch("deit", "image", _seeded(_deit)),
    Arch("beit", "image", _seeded(_beit)),
    Arch("dinov2", "image", _seeded(_dinov2)),
    Arch("dinov2-registers", "image", _seeded(_dinov2_registers)),
    Arch("swin", "image", _seeded(_swin)),
    Arch("swinv2", "image", _seeded(_swinv2)),
    Arch("convnext", "image", _seeded(_convnext)),
    Arch("convnextv2", "image", _seeded(_convnextv2)),
    Arch("resnet", "image", _seeded(_resnet)),
    Arch("regnet", "image", _seeded(_regnet)),
    Arch("efficientnet", "image", _seeded(_efficientnet)),
    Arch("mobilenet-v2", "image", _seeded(_mobilenet_v2)),
    Arch("levit", "image", _seeded(_levit), image_size=64),
    Arch("hiera", "image", _seeded(_hiera)),
    Arch("pvt-v2", "image", _seeded(_pvt_v2)),
    Arch("clip-vision", "image", _seeded(_clip)),
    Arch("siglip-vision", "image", _seeded(_siglip)),
    Arch("data2vec-vision", "image", _seeded(_data2vec_vision)),
    Arch("mobilevit", "image", _seeded(_mobilevit), image_size=64),
    Arch("mobilenet-v1", "image", _seeded(_mobilenet_v1)),
    Arch("bit", "image", _seeded(_bit)),
    Arch("focalnet", "image", _seeded(_focalnet)),
    Arch("segformer", "image", _seeded(_segformer)),
    Arch("poolformer", "image", _seeded(_poolformer)),
    Arch("cvt", "image", _seeded(_cvt)),
    # transformers encoder text classifiers
    Arch("bert", "text", _seeded(_bert)),
    Arch("roberta", "text", _seeded(_roberta), pad_token_id=1),
    Arch("xlm-roberta", "text", _seeded(_xlm_roberta), pad_token_id=1),
    Arch("distilbert", "text", _seeded(_distilbert)),
    Arch("deberta", "text", _seeded(_deberta)),
    Arch("deberta-v2", "text", _seeded(_deberta_v2)),
    Arch("electra", "text", _seeded(_electra)),
    Arch("albert", "text", _seeded(_albert)),
    Arch("mpnet", "text", _seeded(_mpnet), pad_token_id=1),
    Arch("modernbert", "text", _seeded(_modernbert)),
    Arch("roformer", "text", _seeded(_roformer)),
    Arch("convbert", "text", _seeded(_convbert)),
    Arch("mobilebert", "text", _seeded(_mobilebert)),
    Arch("funnel", "text", _seeded(_funnel), pads_consistently=False),
    Arch("xlnet", "text", _seeded(_xlnet), pads_consistently=False),
    Arch("longformer", "text", _seeded(_longformer), pad_token_id=1),
    # transformers decoder classifiers
    Arch("llama", "decoder", _seeded(_llama)),
    Arch("qwen2", "decoder", _seeded(_qwen2)),
    Arch("qwen3", "decoder", _seeded(_qwen3)),
    Arch("mistral", "decoder", _seeded(_mistral)),
    Arch("gemma", "decoder", _seeded(_gemma)),
    Arch("gemma2", "decoder", _seeded(_gemma2)),
    Arch("phi3", "decoder", _seeded(_phi3)),
    Arch("gpt2", "decoder", _seeded(_gpt2)),
    Arch("gpt-neox", "decoder", _seeded(_gpt_neox)),
    Arch("opt", "decoder", _seeded(_opt)),
    Arch("phi", "decoder", _seeded(_phi)),
    Arch("falcon", "decoder", _seeded(_falcon)),
    Arch("bloom", "decoder", _seeded(_bloom)),
    Arch("gptj", "decoder", _seeded(_gptj)),
    Arch("stablelm", "decoder", _seeded(_stablelm)),
    Arch("qwen3-moe", "decoder", _seeded(_qwen3_moe)),
    Arch("mixtral", "decoder", _seeded(_mixtral)),
    Arch("olmo2", "decoder", _seeded(_olmo2)),
    Arch("gemma3-text", "decoder", _seeded(_gemma3_text)),
    Arch("smollm3", "decoder", _seeded(_smollm3)),
    Arch("gpt-bigcode", "decoder", _seeded(_gpt_bigcode)),
    Arch("gpt-oss", "decoder", _seeded(_gpt_oss)),
    # timm classifiers
    *[
        Arch(f"timm-{label}", "timm", _seeded(_timm(name, **kwargs)), image_size=size)
        for label, name, kwargs, size in _TIMM
    ],
]

ARCHS_BY_NAME: dict[str, Arch] = {arch.name: arch for arch in ARCHS}
assert len(ARCHS_BY_NAME) == len(ARCHS), "duplicate architecture names"
assert all(arch.kind in KINDS for arch in ARCHS)


def make_inputs(arch: Arch, batch: int = 4, seed: int = 0, pad: int = 0) -> dict[str, torch.Tensor]:
    """Inputs for `arch`'s model (no labels).

    Vision kinds: `{"pixel_values": randn(batch, 3, S, S)}` with S = `arch.image_size` (timm models too: call them
    through `forward_logits`, or as `model(inputs["pixel_values"])`). Text kinds: `{"input_ids", "attention_mask"}`
    of `SEQ_LEN` tokens drawn from [3, vocab_size) (no special ids); with `pad`, the last `pad` positions of every row
    except row 0 are padding (attention_mask 0, input_ids = the config's pad id), so row 0 is always full length.
    """
    g = torch.Generator().manual_seed(seed)
    if arch.is_vision:
        return {"pixel_values": torch.randn(batch, 3, arch.image_size, arch.image_size, generator=g)}
    if not 0 <= pad < SEQ_LEN:
        raise ValueError(f"pad must be in [0, {SEQ_LEN}), got {pad}")
    input_ids = torch.randint(3, arch.vocab_size, (batch, SEQ_LEN), generator=g)
    attention_mask = torch.ones_like(input_ids)
    if pad:
        attention_mask[1:, SEQ_LEN - pad :] = 0
        input_ids[1:, SEQ_LEN - pad :] = arch.pad_token_id
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _is_transformers(model: nn.Module) -> bool:
    from transformers import PreTrainedModel

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # through a PeftModel
    return isinstance(base, PreTrainedModel)


def forward_logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits [batch, NUM_LABELS]: transformers models (bare or peft-wrapped) get `**inputs` and return `.logits`,
    timm models get the image tensor positionally."""
    if _is_transformers(model):
        return model(**inputs).logits
    out = model(inputs["pixel_values"])
    return out.logits if hasattr(out, "logits") else out
