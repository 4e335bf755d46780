"""The rows of the conformance matrix: small random-weight torchvision, timm and Hugging Face models.

Every builder returns ``(model, example_inputs, calibration_batches)``: the model in eval mode, built under a fixed
seed (so building twice gives the same weights, which the save/load round trip relies on), one example batch and a
few calibration batches of the same shape. Sizes are small on purpose (images 32-75 px, transformers of width 64
with 2 layers) so the whole matrix stays cheap; where a family's lightest member is still large, the builder uses
its architecture class with fewer blocks. Nothing is downloaded: torchvision ``weights=None``, timm
``pretrained=False``, Hugging Face models from configs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torchvision_guard
from torch import nn

torchvision_guard.install()  # before timm or torchvision is first imported

Built = tuple[nn.Module, Any, list[Any]]

#: batch size of the example and of every calibration batch; calibration batches per model
BATCH, CALIB_BATCHES = 2, 4
#: the small transformer shape every Hugging Face row uses
HIDDEN, LAYERS, HEADS, VOCAB, SEQ = 64, 2, 4, 100, 16
#: BatchNorm statistics: batches and pixels per batch (128 images of 32 px, 5 of 224 px)
BN_BATCHES, BN_PIXELS = 4, 128 * 32 * 32


def _no_zero_layers(model: nn.Module) -> nn.Module:
    """Give zero-initialized Linear/Conv weights (torchvision's ViT head, ...) small random values: with random
    weights elsewhere, an all-zero output would make every agreement check vacuous."""
    with torch.no_grad():
        for m in model.modules():
            w = getattr(m, "weight", None)
            if isinstance(m, nn.Linear | nn.Conv2d) and isinstance(w, torch.Tensor) and not w.any():
                nn.init.trunc_normal_(w, std=0.02)
    return model


def _trained_norms(model: nn.Module, size: int) -> nn.Module:
    """Give BatchNorm layers what a trained model's have: a scale that is not zero (timm's ``zero_init_last`` and
    LeViT's residual BNs start at gamma 0, which turns whole blocks off) and running statistics measured on the
    input distribution the cells feed (random images). Left at their initial mean 0 / variance 1, the statistics
    match nothing: activations shrink or grow layer after layer (random MobileNet/EfficientNet logits of 1e-14,
    identical for every input) and the quantization checks compare noise. Deterministic: fixed inputs, and
    ``momentum=None`` (a plain average over the batches)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return model
    momenta = [m.momentum for m in norms]
    with torch.no_grad():
        for m in norms:
            if m.weight is not None and not m.weight.any():
                m.weight.fill_(1.0)
            m.reset_running_stats()
            m.momentum = None
        model.train()
        gen = torch.Generator().manual_seed(2)  # the same distribution as _images, other samples
        for _ in range(BN_BATCHES):
            model(torch.randn(max(1, BN_PIXELS // (size * size)), 3, size, size, generator=gen))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return model.eval()


def _images(size: int, channels: int = 3) -> tuple[torch.Tensor, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(BATCH, channels, size, size, generator=gen) for _ in range(CALIB_BATCHES + 1)]
    return batches[0], batches[1:]


def _vision(make: Callable[[], nn.Module], size: int) -> Callable[[], Built]:
    def build() -> Built:
        torch.manual_seed(0)
        model = _trained_norms(_no_zero_layers(make()), size).eval()
        example, calib = _images(size)
        return model, example, calib

    return build


def _tv(name: str, size: int = 32, **kwargs: Any) -> Callable[[], Built]:
    def make() -> nn.Module:
        import torchvision.models as tvm

        return getattr(tvm, name)(weights=None, num_classes=10, **kwargs)

    return _vision(make, size)


def _tv_resnet(block: str, **kwargs: Any) -> Callable[[], Built]:
    """ResNet / ResNeXt / Wide-ResNet bottleneck layouts shortened to 1-2 blocks per stage (a stage of one block
    has no block whose output has its input's shape, so nothing to remove; the second stage has two)."""

    def make() -> nn.Module:
        from torchvision.models import resnet

        return resnet.ResNet(getattr(resnet, block), [1, 2, 1, 1], num_classes=10, **kwargs)

    return _vision(make, 32)


def _tv_small_head(name: str, size: int, width: int) -> Callable[[], Built]:
    """VGG / AlexNet with their classifier's three layers narrowed (the 4096-wide head is 90% of the weights)."""

    def make() -> nn.Module:
        import torchvision.models as tvm

        model = getattr(tvm, name)(weights=None, num_classes=10)
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier = nn.Sequential(nn.Dropout(), nn.Linear(width, 128), nn.ReLU(inplace=True), nn.Dropout(),
                                         nn.Linear(128, 128), nn.ReLU(inplace=True), nn.Linear(128, 10))
        return model

    return _vision(make, size)


def _tv_densenet() -> nn.Module:
    from torchvision.models.densenet import DenseNet

    return DenseNet(growth_rate=12, block_config=(2, 2, 2, 2), num_init_features=24, num_classes=10)


def _tv_convnext() -> nn.Module:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(32, 64, 1), CNBlockConfig(64, 128, 1), CNBlockConfig(128, None, 1)],
                    num_classes=10)


def _tv_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=LAYERS, num_heads=HEADS, hidden_dim=HIDDEN,
                             mlp_dim=4 * HIDDEN, num_classes=10)


def _tv_swin(v2: bool) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        from torchvision.models import swin_transformer as sw

        extra = {"block": sw.SwinTransformerBlockV2, "downsample_layer": sw.PatchMergingV2} if v2 else {}
        return sw.SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2, 2], num_heads=[2, 4],
                                  window_size=[4, 4], stochastic_depth_prob=0.0, num_classes=10, **extra)

    return make


def _tv_maxvit() -> nn.Module:
    from torchvision.models.maxvit import MaxVit

    return MaxVit(input_size=(64, 64), stem_channels=16, partition_size=4, block_channels=[32, 64],
                  block_layers=[1, 1], head_dim=16, stochastic_depth_prob=0.0, num_classes=10)


def _timm(name: str, size: int, **kwargs: Any) -> Callable[[], Built]:
    def make() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)

    return _vision(make, size)


def _timm_convmixer() -> nn.Module:
    from timm.models.convmixer import ConvMixer

    return ConvMixer(dim=64, depth=2, kernel_size=5, patch_size=4, num_classes=10)


def _timm_mixer(resmlp: bool) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        from functools import partial

        from timm.layers import Mlp
        from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock

        extra = {"block_layer": partial(ResBlock, init_values=1e-4), "norm_layer": Affine, "mlp_layer": Mlp,
                 "mlp_ratio": 4} if resmlp else {}
        return MlpMixer(num_classes=10, img_size=32, patch_size=8, num_blocks=LAYERS, embed_dim=HIDDEN, **extra)

    return make


def _tokens(vocab: int = VOCAB, seq: int = SEQ, **extra: Callable[[torch.Generator], torch.Tensor]
            ) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    gen = torch.Generator().manual_seed(1)

    def batch() -> dict[str, torch.Tensor]:
        out = {"input_ids": torch.randint(0, vocab, (BATCH, seq), generator=gen)}
        out.update({k: f(gen) for k, f in extra.items()})
        return out

    batches = [batch() for _ in range(CALIB_BATCHES + 1)]
    return batches[0], batches[1:]


def _hf(config_name: str, model_name: str, inputs: Callable[[], tuple[Any, list[Any]]] = _tokens,
        **config: Any) -> Callable[[], Built]:
    def build() -> Built:
        import transformers

        torch.manual_seed(0)
        cfg = getattr(transformers, config_name)(**config)
        model = _no_zero_layers(getattr(transformers, model_name)(cfg)).eval()
        example, calib = inputs()
        return model, example, calib

    return build


_ENCODER = {"vocab_size": VOCAB, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
            "intermediate_size": 4 * HIDDEN, "max_position_embeddings": 64}
#: decoder LMs return their logits only: no key/value cache in the outputs
_DECODER = {**_ENCODER, "num_key_value_heads": HEADS, "use_cache": False}


def _t5_inputs() -> tuple[Any, list[Any]]:
    return _tokens(decoder_input_ids=lambda g: torch.randint(0, VOCAB, (BATCH, 8), generator=g))


def _whisper_inputs() -> tuple[Any, list[Any]]:
    gen = torch.Generator().manual_seed(1)
    batches = [{"input_features": torch.randn(BATCH, 16, 64, generator=gen)} for _ in range(CALIB_BATCHES + 1)]
    return batches[0], batches[1:]


def _clip_inputs() -> tuple[Any, list[Any]]:
    return _tokens(pixel_values=lambda g: torch.randn(BATCH, 3, 32, 32, generator=g))


def _vit_inputs() -> tuple[Any, list[Any]]:
    gen = torch.Generator().manual_seed(1)
    batches = [{"pixel_values": torch.randn(BATCH, 3, 32, 32, generator=gen)} for _ in range(CALIB_BATCHES + 1)]
    return batches[0], batches[1:]


def _clip_config() -> Any:
    import transformers

    text = {"vocab_size": VOCAB, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
            "intermediate_size": 4 * HIDDEN, "max_position_embeddings": 64, "projection_dim": 32}
    vision = {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
              "intermediate_size": 4 * HIDDEN, "image_size": 32, "patch_size": 8, "projection_dim": 32}
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)


def _hf_clip() -> Built:
    import transformers

    torch.manual_seed(0)
    model = transformers.CLIPModel(_clip_config()).eval()
    example, calib = _clip_inputs()
    return model, example, calib


def _with_example(build: Callable[[], Built]) -> Callable[[], Built]:
    """The calibration batches end with the example batch itself. A random-weight network is chaotic: one random
    image can drive an activation to 50x the range of another (measured: timm tf_efficientnet_b0's last Linear
    sees inputs up to 1.7, 1.0, 5.0, 56 and 0.9 on five batches), so ranges calibrated on other random images
    clip the checked batch and the static-int8 check would measure that luck, not the quantization. Trained
    networks on their data do not behave so; the cells check the quantization on data it was calibrated on."""

    def built() -> Built:
        model, example, calib = build()
        return model, example, [*calib, example]

    built.__wrapped__ = build  # type: ignore[attr-defined]
    return built


#: row name -> builder; the family each row stands for is in its name
ROWS: dict[str, Callable[[], Built]] = {
    # torchvision (26)
    "tv/resnet18": _tv("resnet18"),
    "tv/resnet50-layout": _tv_resnet("Bottleneck"),
    "tv/resnext50-layout": _tv_resnet("Bottleneck", groups=32, width_per_group=4),
    "tv/wide_resnet50-layout": _tv_resnet("Bottleneck", width_per_group=128),
    "tv/densenet-small": _vision(_tv_densenet, 32),
    "tv/googlenet": _tv("googlenet", 64, aux_logits=False, init_weights=False),
    "tv/inception_v3": _tv("inception_v3", 75, aux_logits=False, init_weights=False),
    "tv/mobilenet_v2": _tv("mobilenet_v2", 64),
    "tv/mobilenet_v3_small": _tv("mobilenet_v3_small", 64),
    "tv/mobilenet_v3_large": _tv("mobilenet_v3_large", 64),
    "tv/mnasnet0_5": _tv("mnasnet0_5", 64),
    "tv/shufflenet_v2_x0_5": _tv("shufflenet_v2_x0_5"),
    "tv/squeezenet1_0": _tv("squeezenet1_0", 64),
    "tv/squeezenet1_1": _tv("squeezenet1_1", 64),
    "tv/efficientnet_b0": _tv("efficientnet_b0", 64),
    "tv/efficientnet_v2_s": _tv("efficientnet_v2_s"),
    "tv/regnet_x_400mf": _tv("regnet_x_400mf"),
    "tv/regnet_y_400mf": _tv("regnet_y_400mf"),
    "tv/convnext-small": _vision(_tv_convnext, 32),
    "tv/vit-small": _vision(_tv_vit, 32),
    "tv/swin-small": _vision(_tv_swin(False), 32),
    "tv/swin_v2-small": _vision(_tv_swin(True), 32),
    "tv/maxvit-small": _vision(_tv_maxvit, 64),
    "tv/vgg11_bn": _tv_small_head("vgg11_bn", 32, 512),
    "tv/vgg11": _tv_small_head("vgg11", 32, 512),
    "tv/alexnet": _tv_small_head("alexnet", 64, 256),
    # timm (17)
    "timm/tf_efficientnet_b0": _timm("tf_efficientnet_b0", 64),
    "timm/tf_mobilenetv3_small_minimal_100": _timm("tf_mobilenetv3_small_minimal_100", 64),
    "timm/tf_mixnet_s": _timm("tf_mixnet_s", 64),
    "timm/deit_tiny": _timm("deit_tiny_patch16_224", 32, img_size=32, patch_size=8, depth=LAYERS),
    "timm/mobilevit_xxs": _timm("mobilevit_xxs", 64),
    "timm/levit_128s": _timm("levit_128s", 64, img_size=64),
    "timm/repvgg_a0": _timm("repvgg_a0", 32),
    "timm/ghostnet_050": _timm("ghostnet_050", 32),
    "timm/efficientformer_l1": _timm("efficientformer_l1", 224),  # its attention biases are fixed to 224 px
    "timm/coatnet_nano_rw": _timm("coatnet_nano_rw_224", 64, img_size=64),
    "timm/convmixer-small": _vision(_timm_convmixer, 32),
    "timm/resmlp-small": _vision(_timm_mixer(resmlp=True), 32),
    "timm/mlp_mixer-small": _vision(_timm_mixer(resmlp=False), 32),
    "timm/regnetx_002": _timm("regnetx_002", 64),
    "timm/mobilenetv3_small_050": _timm("mobilenetv3_small_050", 64),
    "timm/resnet10t": _timm("resnet10t", 32),
    "timm/rexnet_100": _timm("rexnet_100", 64),
    # Hugging Face transformers (14)
    "hf/bert": _hf("BertConfig", "BertModel", **_ENCODER),
    "hf/roberta": _hf("RobertaConfig", "RobertaModel", **_ENCODER),
    "hf/distilbert": _hf("DistilBertConfig", "DistilBertModel", vocab_size=VOCAB, dim=HIDDEN, n_layers=LAYERS,
                         n_heads=HEADS, hidden_dim=4 * HIDDEN, max_position_embeddings=64),
    "hf/albert": _hf("AlbertConfig", "AlbertModel", embedding_size=32, **_ENCODER),
    "hf/gpt2": _hf("GPT2Config", "GPT2LMHeadModel", vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                   n_positions=64, use_cache=False),
    "hf/gpt_neox": _hf("GPTNeoXConfig", "GPTNeoXForCausalLM", **_ENCODER, use_cache=False),
    "hf/llama": _hf("LlamaConfig", "LlamaForCausalLM", **_DECODER),
    "hf/mistral": _hf("MistralConfig", "MistralForCausalLM", **_DECODER),
    "hf/qwen2": _hf("Qwen2Config", "Qwen2ForCausalLM", **_DECODER),
    "hf/phi": _hf("PhiConfig", "PhiForCausalLM", **_DECODER),
    "hf/t5": _hf("T5Config", "T5ForConditionalGeneration", _t5_inputs, vocab_size=VOCAB, d_model=HIDDEN, d_kv=16,
                 d_ff=4 * HIDDEN, num_layers=LAYERS, num_decoder_layers=LAYERS, num_heads=HEADS, use_cache=False),
    "hf/vit": _hf("ViTConfig", "ViTForImageClassification", _vit_inputs, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, intermediate_size=4 * HIDDEN, image_size=32, patch_size=8, num_labels=10),
    "hf/whisper_encoder": _hf("WhisperConfig", "WhisperForAudioClassification",
                              _whisper_inputs, num_mel_bins=16, d_model=HIDDEN, encoder_layers=LAYERS,
                              encoder_attention_heads=HEADS, encoder_ffn_dim=4 * HIDDEN, max_source_positions=32,
                              decoder_layers=1, decoder_attention_heads=HEADS, vocab_size=VOCAB, num_labels=10),
    "hf/clip": _hf_clip,
}
ROWS = {name: _with_example(build) for name, build in ROWS.items()}
