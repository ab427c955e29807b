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
right-padded (see the note at `_TEXT_ARCHS`): that is the plain model's behaviour, not something to fix in the adapter.

Every architecture of the required list builds tiny on the installed versions (transformers 5.24, timm 1.0.31);
configurations that these versions cannot build are noted where they would be.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import timm
import torch
from tiny_models import hf_image, hf_text
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


def _image(prefix: str, **config_kwargs) -> Callable[[], nn.Module]:
    """Seeded builder of transformers' `<prefix>ForImageClassification(<prefix>Config(**config_kwargs))`."""
    return _seeded(hf_image(prefix, **config_kwargs))


def _text(prefix: str, **config_kwargs) -> Callable[[], nn.Module]:
    """Seeded builder of transformers' `<prefix>ForSequenceClassification(<prefix>Config(**config_kwargs))`."""
    return _seeded(hf_text(prefix, **config_kwargs))


def _timm(name: str, **kwargs) -> Callable[[], nn.Module]:
    """Seeded builder of `timm.create_model(name, pretrained=False, num_classes=NUM_LABELS, **kwargs)`."""

    def build() -> nn.Module:
        return timm.create_model(name, pretrained=False, num_classes=NUM_LABELS, **kwargs)

    build.__name__ = f"timm_{name}"
    return _seeded(build)


# Sizes shared across families (each entry adds what is its own)
_BLOCKS = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2)  # 4 transformer blocks 32 wide, 2 heads
_RGB = dict(num_channels=3, num_labels=NUM_LABELS)  # RGB in, NUM_LABELS out
_RGB32 = dict(image_size=32, **_RGB)
_STAGES = dict(depths=[1, 1, 2, 1])  # four stages, the third one two blocks deep
_TOKENS = dict(vocab_size=VOCAB, max_position_embeddings=MAX_POS)
_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)  # special ids, below the inputs' [3, VOCAB)
# vocabulary, 4 layers, 2 heads under GPT-2's names (GPT-2, GPT-J, GPTBigCode, BLOOM, XLNet; each adds its widths)
_GPT_SIZES = dict(vocab_size=VOCAB, n_layer=4, n_head=2, **_IDS, num_labels=NUM_LABELS)

# ---------------------------------------------------------------------------------------------------------------
# transformers image classifiers (input `pixel_values`, 32x32 unless noted)
# ---------------------------------------------------------------------------------------------------------------

# ViT-like: 32 px in 4 px patches = 64 patch tokens (+ CLS / distillation / register tokens), width 32, MLP 80.
_VIT_KW = dict(patch_size=4, **_BLOCKS, **_RGB32)
_BEIT_KW = dict(intermediate_size=80, use_relative_position_bias=True, use_mean_pooling=True, **_VIT_KW)

# Swin: 2 px patches -> 16x16, 8x8, 4x4 token grids with widths 24, 48, 96; windows of 4x4 tokens, shifted in
# every 2nd block. Three stages, not four: a 2x2 last stage is smaller than the window, which transformers' Swin
# does not support (its relative position bias keeps the configured window: a size-mismatch error in attention),
# and SwinV2 would shrink its window to 2 (a 3x3 relative-coordinate table).
_SWIN_KW = dict(
    patch_size=2, embed_dim=24, depths=[2, 2, 2], num_heads=[2, 2, 2], window_size=4, mlp_ratio=2.0, **_RGB32
)

# ConvNeXt: 2 px stem -> 16, 8, 4, 2 px stages with widths 24, 40, 48, 56.
_CONVNEXT_KW = dict(patch_size=2, hidden_sizes=[24, 40, 48, 56], **_STAGES, **_RGB32)

# ResNet: stem 24 @ 16 px, max-pool -> 8 px; bottleneck stages 48, 80, 96, 112 (inner 12, 20, 24, 28) @ 8, 4, 2, 1 px
_RESNET_KW = dict(embedding_size=24, hidden_sizes=[48, 80, 96, 112], **_STAGES, **_RGB)

# RegNet: stem 24 @ 16 px; Y-blocks (SE) 24, 48, 72, 96 @ 8, 4, 2, 1 px, groups of 8 channels
_REGNET_KW = dict(embedding_size=24, hidden_sizes=[24, 48, 72, 96], groups_width=8, layer_type="y", **_STAGES, **_RGB)

# EfficientNet: stem 32 @ 16 px; MBConv blocks 24 @ 16, 40 @ 8, 48 x2 @ 4, 56 @ 2 px; head conv to 1280 (=
# hidden_dim, which the width coefficient 1.0 fixes)
_MBCONV = dict(
    kernel_sizes=[3, 3, 5, 3], in_channels=[32, 24, 40, 48], out_channels=[24, 40, 48, 56], strides=[1, 2, 2, 2]
)
_EFFNET = dict(num_block_repeats=[1, 1, 2, 1], expand_ratios=[1, 6, 6, 6], hidden_dim=1280, **_MBCONV, **_RGB32)

# MobileNetV2: the 17 blocks are fixed; multiplier 0.5 rounded to multiples of 6 gives widths 18 (stem) @ 16 px,
# 8 @ 16, 12 @ 8, 18 @ 4, 30 and 48 @ 2, 80 and 160 @ 1 px (none equal to a spatial size).
_MOBILENET_V2_KW = dict(depth_multiplier=0.5, depth_divisible_by=6, finegrained_output=False, **_RGB32)

# LeViT's stem divides by 16, so 64 px: 4x4, 2x2, 1x1 token grids with widths 40, 56, 72 (32 px would leave a 2x2
# grid for the first stage and nothing to subsample).
_LEVIT_STAGES = dict(num_attention_heads=[2, 2, 2], depths=[2, 2, 2], mlp_ratio=[2, 2, 2], attention_ratio=[2, 2, 2])
_LEVIT_KW = dict(image_size=64, patch_size=16, hidden_sizes=[40, 56, 72], key_dim=[8, 8, 8], **_LEVIT_STAGES, **_RGB)

# Hiera: 4 px patch stride -> 8x8 tokens, query pooling to 4x4, 2x2, 1x1; widths 24, 48, 96, 192
_HIERA_KW = dict(embed_dim=24, num_heads=[1, 2, 2, 2], mlp_ratio=2.0, num_query_pool=3, masked_unit_size=[8, 8])

# PVTv2: overlapping patch embeddings /4, /2, /2, /2 -> 8x8, 4x4, 2x2, 1x1 with widths 24, 40, 48, 56; the
# SegFormer's Mix Transformer encoder further down is sized the same
_MIT_BLOCKS = dict(num_attention_heads=[1, 2, 2, 2], mlp_ratios=[2, 2, 2, 2], **_STAGES, **_RGB)
_MIT_KW = dict(num_encoder_blocks=4, sr_ratios=[8, 4, 2, 1], hidden_sizes=[24, 40, 48, 56], **_MIT_BLOCKS)

# CLIP / SigLIP: only the vision tower is built; the (unused) text config is tiny too
_TEXT_TOWER = dict(_BLOCKS, num_hidden_layers=2, intermediate_size=80, **_TOKENS, **_IDS)
_VISION_TOWER = dict(image_size=32, patch_size=4, num_channels=3, intermediate_size=80, **_BLOCKS)
_TOWERS = dict(text_config=_TEXT_TOWER, vision_config=_VISION_TOWER, num_labels=NUM_LABELS)

# MobileViT: stem /2 -> 32x32 at 64 px; conv widths 24, 40 @ 32, 48 @ 16, 56 @ 8, 72 @ 4, 88 @ 2, 160 (1x1
# expansion); transformer widths 48, 64, 80 over 2x2 patches. 64 px, not 32: at 32 the last stage is 1x1, smaller
# than a patch.
_MOBILEVIT_WIDTHS = dict(hidden_sizes=[48, 64, 80], neck_hidden_sizes=[24, 40, 48, 56, 72, 88, 160])
_MOBILEVIT_KW = dict(image_size=64, patch_size=2, num_attention_heads=2, expand_ratio=2.0, **_MOBILEVIT_WIDTHS, **_RGB)

# FocalNet: 2 px patches -> 16, 8, 4, 2 px stages with widths 24, 48, 96, 192 (focal modulation instead of attention)
_FOCALNET_KW = dict(patch_size=2, embed_dim=24, hidden_sizes=[48, 96, 192, 192], mlp_ratio=2.0, **_STAGES, **_RGB32)
_FOCAL = dict(focal_levels=[2, 2, 2, 2], focal_windows=[3, 3, 3, 3], drop_path_rate=0.0)

# CvT: convolutional token embeddings /4, /2, /2 -> 8x8, 4x4, 2x2 tokens with widths 24, 48, 96; CLS in the last
# stage. Stage i needs more than i layers (transformers' CvtStage indexes its drop-path list by stage), so 1, 2, 4.
_CVT_KW = dict(embed_dim=[24, 48, 96], num_heads=[1, 2, 2], depth=[1, 2, 4], mlp_ratio=[2.0, 2.0, 2.0], **_RGB)

_IMAGE_ARCHS = [
    Arch("vit", "image", _image("ViT", intermediate_size=80, **_VIT_KW)),
    Arch("deit", "image", _image("DeiT", intermediate_size=80, **_VIT_KW)),
    Arch("beit", "image", _image("Beit", vocab_size=VOCAB, **_BEIT_KW)),
    Arch("dinov2", "image", _image("Dinov2", mlp_ratio=3, **_VIT_KW)),  # MLP 96
    Arch("dinov2-registers", "image", _image("Dinov2WithRegisters", mlp_ratio=3, num_register_tokens=2, **_VIT_KW)),
    Arch("swin", "image", _image("Swin", **_SWIN_KW)),
    Arch("swinv2", "image", _image("Swinv2", **_SWIN_KW)),
    Arch("convnext", "image", _image("ConvNext", **_CONVNEXT_KW)),
    Arch("convnextv2", "image", _image("ConvNextV2", **_CONVNEXT_KW)),
    Arch("resnet", "image", _image("ResNet", layer_type="bottleneck", **_RESNET_KW)),
    Arch("regnet", "image", _image("RegNet", **_REGNET_KW)),
    Arch("efficientnet", "image", _image("EfficientNet", width_coefficient=1.0, depth_coefficient=1.0, **_EFFNET)),
    Arch("mobilenet-v2", "image", _image("MobileNetV2", **_MOBILENET_V2_KW)),
    Arch("levit", "image", _image("Levit", **_LEVIT_KW), image_size=64),
    Arch("hiera", "image", _image("Hiera", image_size=[32, 32], **_HIERA_KW, **_STAGES, num_labels=NUM_LABELS)),
    Arch("pvt-v2", "image", _image("PvtV2", image_size=32, **_MIT_KW)),
    Arch("clip-vision", "image", _image("CLIP", projection_dim=32, **_TOWERS)),
    Arch("siglip-vision", "image", _image("Siglip", **_TOWERS)),
    # beyond the list every adapter user is expected to bring: more image families, each a different code path
    Arch("data2vec-vision", "image", _image("Data2VecVision", **_BEIT_KW)),
    Arch("mobilevit", "image", _image("MobileViT", **_MOBILEVIT_KW), image_size=64),
    # 13 fixed depthwise-separable blocks; x0.375: 12 (stem) and 24 @ 16 px, 48 @ 8, 96 @ 4, 192 @ 2, 384 @ 1
    Arch("mobilenet-v1", "image", _image("MobileNetV1", depth_multiplier=0.375, **_RGB32)),
    # pre-activation bottlenecks with weight standardisation and group norm (4 groups), as the ResNet above
    Arch("bit", "image", _image("Bit", layer_type="preactivation", num_groups=4, **_RESNET_KW)),
    Arch("focalnet", "image", _image("FocalNet", **_FOCALNET_KW, **_FOCAL)),
    # the Mix Transformer encoder, sized as the PVTv2 above
    Arch("segformer", "image", _image("Segformer", drop_path_rate=0.0, decoder_hidden_size=64, **_MIT_KW)),
    # patch embeddings /4, /2, /2, /2 -> 8, 4, 2, 1 px with widths 24, 40, 48, 56 (pooling as the token mixer)
    Arch("poolformer", "image", _image("PoolFormer", hidden_sizes=[24, 40, 48, 56], mlp_ratio=2.0, **_STAGES, **_RGB)),
    Arch("cvt", "image", _image("Cvt", drop_path_rate=[0.0, 0.0, 0.0], **_CVT_KW)),
]

# ---------------------------------------------------------------------------------------------------------------
# transformers encoder text classifiers (inputs `input_ids`, `attention_mask`; 10 tokens)
# ---------------------------------------------------------------------------------------------------------------

_ENC_KW = dict(intermediate_size=80, **_BLOCKS, **_TOKENS, num_labels=NUM_LABELS)
_BERT_KW = dict(pad_token_id=0, **_ENC_KW)
_ROBERTA_KW = dict(pad_token_id=1, bos_token_id=0, eos_token_id=2, **_ENC_KW)  # <s> 0, <pad> 1, </s> 2, as RoBERTa's

# DistilBERT's names for the same sizes
_DISTILBERT_KW = dict(dim=32, n_layers=4, n_heads=2, hidden_dim=80, pad_token_id=0, num_labels=NUM_LABELS, **_TOKENS)

# DeBERTa, both versions: relative attention, over distances up to max_position_embeddings (-1)
_DEBERTA_KW = dict(relative_attention=True, max_relative_positions=-1, **_BERT_KW)

# DeBERTa-v2, as microsoft/deberta-v3-*: relative attention with log buckets, no absolute position embedding
_DEBERTA_V3 = dict(
    pos_att_type=["p2c", "c2p"], position_biased_input=False, position_buckets=20, norm_rel_ebd="layer_norm"
)

# ModernBERT: alternating global / local (sliding window of 8) attention, every 2nd layer global
_MODERNBERT_KW = dict(global_attn_every_n_layers=2, local_attention=8, cls_token_id=1, sep_token_id=2, **_IDS)

# MobileBERT: 32-wide residual stream with 24-wide bottleneck blocks, trigram input embedding (24 -> 72 -> 32)
_MOBILEBERT_KW = dict(embedding_size=24, intra_bottleneck_size=24, num_feedforward_networks=2, **_BERT_KW)

# Funnel: two blocks of 2 layers; between them the sequence is mean-pooled 10 -> 5 tokens (CLS kept apart)
_FUNNEL_KW = dict(vocab_size=VOCAB, block_sizes=[2, 2], d_model=32, n_head=2, d_head=16, d_inner=80, pad_token_id=0)

# Right padding, plain models (a row alone vs the same row with trailing pads in a batch, atol 1e-5): every text
# and decoder entry agrees to ~1e-7 except two, marked pads_consistently=False:
# * funnel: its poolings average pairs of positions over the (padded) sequence length and truncate_seq drops the
#   last position, so for rows of some lengths (7 of 10 here; with truncate_seq=False, 6) the last real token is
#   dropped alone but averaged with a pad in the batch, or the reverse (~1e-2 to 7e-2);
# * xlnet: summary_type="last" classifies the last position, a pad in a right-padded row (~1e-2); left padding, as
#   XLNet's tokenizer does, agrees.
_TEXT_ARCHS = [
    Arch("bert", "text", _text("Bert", **_BERT_KW)),
    # RoBERTa counts positions from padding_idx + 1 = 2, hence the room in max_position_embeddings
    Arch("roberta", "text", _text("Roberta", **_ROBERTA_KW), pad_token_id=1),
    Arch("xlm-roberta", "text", _text("XLMRoberta", **_ROBERTA_KW), pad_token_id=1),
    Arch("distilbert", "text", _text("DistilBert", **_DISTILBERT_KW)),
    # as microsoft/deberta-base: disentangled relative attention on top of absolute positions
    Arch("deberta", "text", _text("Deberta", pos_att_type=["c2p", "p2c"], **_DEBERTA_KW)),
    Arch("deberta-v2", "text", _text("DebertaV2", **_DEBERTA_V3, **_DEBERTA_KW)),
    # embeddings 24 wide, projected to the 32-wide encoder
    Arch("electra", "text", _text("Electra", embedding_size=24, **_BERT_KW)),
    # ALBERT shares one layer's weights across its 4 layers (num_hidden_groups=1), as the released models do: there
    # is a single `albert_layer` module, called 4 times.
    Arch("albert", "text", _text("Albert", embedding_size=24, num_hidden_groups=1, **_BERT_KW)),
    # relative_attention_num_buckets stays 32: transformers' MPNet buckets positions into 32 whatever the config says
    Arch("mpnet", "text", _text("MPNet", **_ROBERTA_KW), pad_token_id=1),
    Arch("modernbert", "text", _text("ModernBert", **_MODERNBERT_KW, **_ENC_KW)),
    # beyond the required list
    Arch("roformer", "text", _text("RoFormer", embedding_size=32, **_BERT_KW)),
    # half the heads are span-based dynamic convolutions (head_ratio 2): 1 attention head + convolution
    Arch("convbert", "text", _text("ConvBert", embedding_size=32, head_ratio=2, conv_kernel_size=5, **_BERT_KW)),
    Arch("mobilebert", "text", _text("MobileBert", **_MOBILEBERT_KW)),
    Arch("funnel", "text", _text("Funnel", num_labels=NUM_LABELS, **_FUNNEL_KW), pads_consistently=False),
    # summary_type="last": classifies the last position, which is where XLNet's tokenizer puts <cls> (it pads on the
    # left). make_inputs pads on the right, so for padded rows it classifies a pad position (note at this list).
    Arch("xlnet", "text", _text("XLNet", d_model=32, d_inner=80, mem_len=None, **_GPT_SIZES), pads_consistently=False),
    # local attention windows of 8 tokens (the input is padded to a multiple of 8 inside), global attention on CLS.
    # (BigBird is not listed: at 10 tokens its block-sparse attention falls back to full attention, i.e. BERT.)
    Arch("longformer", "text", _text("Longformer", attention_window=8, sep_token_id=2, **_ROBERTA_KW), pad_token_id=1),
]

# ---------------------------------------------------------------------------------------------------------------
# transformers decoder classifiers (`...ForSequenceClassification`: the last non-pad token's state is classified)
# ---------------------------------------------------------------------------------------------------------------

_DEC_BASE = dict(**_BLOCKS, **_TOKENS, **_IDS, num_labels=NUM_LABELS)  # each adds its MLP width (80)
_DEC_KW = dict(intermediate_size=80, **_DEC_BASE)
_GQA = dict(num_key_value_heads=1, **_DEC_KW)  # 2 query heads share 1 key/value head
_GQA16 = dict(head_dim=16, **_GQA)
_GPT_KW = dict(n_positions=MAX_POS, n_embd=32, n_inner=80, **_GPT_SIZES)
_EXPERTS = dict(num_local_experts=8, num_experts_per_tok=2)  # Mixtral, GPT-OSS: 8 experts, 2 per token

# the new Falcon decoder architecture (Falcon 40B/180B-style: grouped KV heads, parallel attention)
_FALCON_KW = dict(num_kv_heads=1, new_decoder_architecture=True, ffn_hidden_size=80, **_DEC_BASE)

# Qwen3-MoE: every MLP a mixture of 8 experts (24 wide), 2 per token
_QWEN3_MOE_KW = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=24, **_GQA16)

# GPT-OSS: attention sinks, alternating sliding-window (8) / full layers, 8 experts with 2 per token
# YaRN rope as released, rescaled so that original x factor = max_position_embeddings
_YARN = dict(rope_type="yarn", factor=2.0, beta_fast=32.0, beta_slow=1.0, truncate=False)
_GPT_OSS_ROPE = dict(_YARN, original_max_position_embeddings=MAX_POS // 2, rope_theta=150000.0)

_DECODER_ARCHS = [
    Arch("llama", "decoder", _text("Llama", **_GQA)),
    Arch("qwen2", "decoder", _text("Qwen2", **_GQA)),
    Arch("qwen3", "decoder", _text("Qwen3", **_GQA16)),
    Arch("mistral", "decoder", _text("Mistral", **_GQA16)),
    Arch("gemma", "decoder", _text("Gemma", **_GQA16)),
    # alternating sliding-window (8 tokens) / global layers, attention-logit soft-capping as released
    Arch("gemma2", "decoder", _text("Gemma2", query_pre_attn_scalar=16, sliding_window=8, **_GQA16)),
    Arch("phi3", "decoder", _text("Phi3", original_max_position_embeddings=MAX_POS, **_GQA)),
    Arch("gpt2", "decoder", _text("GPT2", **_GPT_KW)),
    Arch("gpt-neox", "decoder", _text("GPTNeoX", **_DEC_KW)),
    # beyond the required list
    Arch("opt", "decoder", _text("OPT", ffn_dim=80, **_DEC_BASE)),
    # parallel attention + MLP, partial rotary embedding
    Arch("phi", "decoder", _text("Phi", **_DEC_KW)),
    Arch("falcon", "decoder", _text("Falcon", **_FALCON_KW)),
    # ALiBi position biases, no position embedding
    Arch("bloom", "decoder", _text("Bloom", hidden_size=32, **_GPT_SIZES)),
    Arch("gptj", "decoder", _text("GPTJ", rotary_dim=8, **_GPT_KW)),
    Arch("stablelm", "decoder", _text("StableLm", **_GQA)),
    Arch("qwen3-moe", "decoder", _text("Qwen3Moe", **_QWEN3_MOE_KW)),
    Arch("mixtral", "decoder", _text("Mixtral", **_EXPERTS, **_GQA16)),
    Arch("olmo2", "decoder", _text("Olmo2", **_GQA)),
    # 5 sliding-window layers per global one as released; with 4 layers all 4 are sliding-window (8 tokens)
    Arch("gemma3-text", "decoder", _text("Gemma3Text", query_pre_attn_scalar=16, sliding_window=8, **_GQA16)),
    # no rotary embedding in every 4th layer (NoPE), as released
    Arch("smollm3", "decoder", _text("SmolLM3", **_GQA)),
    # StarCoder's multi-query attention
    Arch("gpt-bigcode", "decoder", _text("GPTBigCode", multi_query=True, **_GPT_KW)),
    Arch("gpt-oss", "decoder", _text("GptOss", sliding_window=8, rope_parameters=_GPT_OSS_ROPE, **_EXPERTS, **_GQA16)),
]

# ---------------------------------------------------------------------------------------------------------------
# timm classifiers: timm.create_model(name, pretrained=False, num_classes=3, **small kwargs)
# ---------------------------------------------------------------------------------------------------------------

_TIMM_VIT = dict(img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=2)  # timm's ViTs: 4 px patches, width 48
_TIMM_CONVNEXT = dict(depths=(1, 1, 2, 1), dims=(24, 40, 48, 56))  # stem /4 -> 8, 4, 2, 1 px, widths 24, 40, 48, 56
# as the transformers Swin above (3 stages 24, 48, 96 @ 16, 8, 4), in timm's channels-last layout
_TIMM_SWIN = dict(img_size=32, patch_size=2, window_size=4, embed_dim=24, depths=(2, 2, 2), num_heads=(2, 2, 2))
# at 64 px (stem /16): 4x4, 2x2, 1x1 tokens with widths 40, 56, 72
_TIMM_LEVIT = dict(img_size=64, embed_dim=(40, 56, 72), key_dim=8, num_heads=(2, 2, 2), depth=(2, 2, 2))
# stem /4 -> 8, 4, 2, 1 px with widths 24, 40, 48, 56 (MBConv first stage, windowed attention after)
_TIMM_TINY_VIT = dict(
    embed_dims=(24, 40, 48, 56), depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 2), window_sizes=(4, 4, 2, 1)
)
# 4 px patch stride -> 8x8 tokens, query-pooled to 4x4, 2x2, 1x1; widths 24, 48, 96, 192
_TIMM_HIERA = dict(img_size=32, embed_dim=24, num_heads=1, stages=(1, 1, 2, 1))

# The EfficientNet-Lite0 and MobileNet generators fix their width multiplier (passing it again is an error) and at
# 32 px their 16-channel stages would sit on 16x16 maps ([B, 16, 16, 16]), or 8 channels on 8x8; at 28 px the maps
# are 14, 7, 4, 2, 1 wide, which no width equals.
_TIMM_ARCHS = [
    # deep-tiered stem 18, 24, 48 @ 16 px; basic-block stages 24, 40, 48, 56 @ 8, 4, 2, 1 px
    Arch("timm-resnet10t", "timm", _timm("resnet10t", stem_width=24, channels=(24, 40, 48, 56))),
    Arch("timm-efficientnet_lite0", "timm", _timm("efficientnet_lite0"), image_size=28),
    # 4 px patches -> 64 tokens + CLS, width 48, MLP 192
    Arch("timm-vit", "timm", _timm("vit_tiny_patch16_224", **_TIMM_VIT)),
    Arch("timm-convnext_atto", "timm", _timm("convnext_atto", **_TIMM_CONVNEXT)),
    Arch("timm-mobilenetv3_small_050", "timm", _timm("mobilenetv3_small_050"), image_size=28),
    Arch("timm-mobilenetv2_050", "timm", _timm("mobilenetv2_050"), image_size=28),
    # as released (13 blocks): stem 32 @ 16 px, stages 24, 56, 152, 368 @ 8, 4, 2, 1 px
    Arch("timm-regnetx_002", "timm", _timm("regnetx_002")),
    # 4 px patches -> 64 tokens + CLS, width 48, rotary position embedding on the 8x8 grid, SwiGLU MLP
    Arch("timm-eva02", "timm", _timm("eva02_tiny_patch14_224", **_TIMM_VIT, ref_feat_shape=(8, 8))),
    Arch("timm-swin", "timm", _timm("swin_tiny_patch4_window7_224", **_TIMM_SWIN)),
    # stem /4 -> RepMixer stages 24, 48, 96, 192 @ 8, 4, 2, 1 px (its grouped downsampling convs need each width
    # to be a multiple of the previous one)
    Arch("timm-fastvit_t8", "timm", _timm("fastvit_t8", layers=(1, 1, 2, 1), embed_dims=(24, 48, 96, 192))),
    # beyond the required list
    # DeiT with its distillation token and head (eval averages the two heads)
    Arch("timm-deit-distilled", "timm", _timm("deit_tiny_distilled_patch16_224", **_TIMM_VIT)),
    # ViT without a class token, average-pooled (as vit_*_gap and many SigLIP-style timm models)
    Arch("timm-vit-gap", "timm", _timm("vit_tiny_patch16_224", class_token=False, global_pool="avg", **_TIMM_VIT)),
    # ViT with 2 register tokens
    Arch("timm-vit-reg", "timm", _timm("vit_tiny_patch16_224", reg_tokens=2, **_TIMM_VIT)),
    Arch("timm-convnextv2_atto", "timm", _timm("convnextv2_atto", **_TIMM_CONVNEXT)),
    # bottleneck ResNet-D: deep stem 24, 24, 48 @ 16 px; stages 96, 160, 192, 224 (inner 24, 40, 48, 56)
    Arch("timm-resnet50d", "timm", _timm("resnet50d", layers=(1, 1, 2, 1), stem_width=24, channels=(24, 40, 48, 56))),
    # as released: stem 32 @ 16 px, SE stages 24, 56, 152, 368 @ 8, 4, 2, 1 px
    Arch("timm-regnety_002", "timm", _timm("regnety_002")),
    # as released (its widths cannot be overridden), at 56 px: 32 px would put 16 channels on 16x16 maps, 64 px 32
    # on 32x32; at 56 the maps are 28, 14, 7, 4, 2 wide (MobileViT blocks at 7 -> unfolded as 8, 4, 2)
    Arch("timm-mobilevit_xxs", "timm", _timm("mobilevit_xxs"), image_size=56),
    # stem 8 @ 16 px, stages 16, 32, 64, 128 @ 8, 4, 2, 1 px, linear attention in the last two; head 160, 192 wide
    Arch("timm-efficientvit_b0", "timm", _timm("efficientvit_b0", head_widths=(160, 192))),
    Arch("timm-levit_128s", "timm", _timm("levit_128s", **_TIMM_LEVIT), image_size=64),
    Arch("timm-tiny_vit_5m_224", "timm", _timm("tiny_vit_5m_224", **_TIMM_TINY_VIT)),
    Arch("timm-hiera_tiny_224", "timm", _timm("hiera_tiny_224", **_TIMM_HIERA)),
    # stem /4 -> 8, 4, 2, 1 px with widths 24, 48, 96, 192
    Arch("timm-repvit_m0_9", "timm", _timm("repvit_m0_9", embed_dim=(24, 48, 96, 192), depth=(1, 1, 2, 1))),
]

# every entry: the transformers image classifiers, encoder and decoder text classifiers, timm classifiers
ARCHS: list[Arch] = [*_IMAGE_ARCHS, *_TEXT_ARCHS, *_DECODER_ARCHS, *_TIMM_ARCHS]


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
