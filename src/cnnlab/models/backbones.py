"""torchvision backbones with a new head for N classes and any number of input channels.

`pretrained` is a torchvision weights name (IMAGENET1K_V1, DEFAULT, ...), fetched through the torch
hub cache where a network or a filled cache has it, or a path to a local state_dict file (a .pt or
.pth of the ImageNet model, loaded with weights_only=True). The ImageNet head is loaded with the rest
and then replaced, so a file of the standard model loads as it is.

A 1-channel input (or any count other than 3) gets a first conv whose weights are the pretrained
RGB filters summed over their input channels (for 1) or their mean repeated: the same response to
a gray image as the RGB filters give to that gray image in three channels.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from cnnlab.errors import ConfigError
from cnnlab.models._registry import MODELS

BACKBONES = [
    "alexnet",
    "vgg16",
    "resnet18",
    "resnet34",
    "resnet50",
    "squeezenet1_0",
    "squeezenet1_1",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
]


class Backbone(nn.Module):
    """body (B, C, h, w) -> head (pool, flatten, classifier). Inside `head`, the classifier layer is
    new (get_classifier()); the rest, a VGG's hidden FC layers say, is pretrained."""

    def __init__(self, body: nn.Module, head: nn.Module, classifier: str) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.classifier = classifier  # the new layer's name inside head, e.g. "2" or "0.1"

    def get_classifier(self) -> nn.Module:
        """The layer trained from scratch: what freeze_epochs leaves trainable and --init-from may replace."""
        return self.head.get_submodule(self.classifier)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _load_pretrained(name: str, pretrained: str | None) -> nn.Module:
    import torchvision.models as tvm

    if pretrained is None:
        return tvm.get_model(name, weights=None)
    path = Path(pretrained).expanduser()
    if path.suffix in (".pt", ".pth") or path.exists():
        if not path.is_file():
            raise ConfigError(f"pretrained weights file {pretrained} does not exist")
        model = tvm.get_model(name, weights=None)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickled code, or not a torch file: either way not weights we can use
            raise ConfigError(
                f"cannot load {path} as a state_dict "
                f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else 'not a torch file'})"
            ) from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise ConfigError(f"{path} holds no state_dict")
        if "format" in state and state.get("format") == "cnnlab-checkpoint":
            raise ConfigError(f"{path} is one of our checkpoints: start from it with --init-from {path}")
        mine = model.state_dict()
        wrong = [
            k
            for k in mine
            if not isinstance(state.get(k), torch.Tensor) or tuple(state[k].shape) != tuple(mine[k].shape)
        ]
        extra = [k for k in state if k not in mine]
        if wrong or extra:
            detail = ", ".join(
                f"{k} {tuple(state[k].shape) if isinstance(state.get(k), torch.Tensor) else 'missing'} "
                f"vs {tuple(mine[k].shape)}"
                for k in wrong[:3]
            )
            raise ConfigError(
                f"{path} does not fit {name}: {len(wrong)} key(s) missing or of another shape ({detail})"
                f"{f', {len(extra)} unexpected' if extra else ''}"
            )
        model.load_state_dict(state)
        model.pretrained_source = str(path)  # said in log.txt (run.prepare)
        return model
    try:
        weights = tvm.get_model_weights(name)[
            "DEFAULT" if pretrained == "imagenet" else pretrained
        ]  # imagenet: as for timm models (--pretrained)
    except KeyError:
        raise ConfigError(
            f"{name} has no weights {pretrained!r}; "
            f"torchvision has {', '.join(tvm.get_model_weights(name).__members__)}, or give a .pt/.pth file"
        ) from None
    try:
        model = tvm.get_model(name, weights=weights)
    except Exception as e:  # no network and no cached copy
        raise ConfigError(
            f"cannot fetch {name} {pretrained} weights ({str(e).splitlines()[0][:100]}); without a network, "
            "put the file in the torch hub cache or pass model.kwargs.pretrained=PATH.pth"
        ) from None
    model.pretrained_source = f"torchvision's {weights} ({weights.url.rsplit('/', 1)[-1]})"
    return model


def _adapt_first_conv(conv: nn.Conv2d, in_channels: int, pretrained: bool) -> nn.Conv2d:
    if conv.in_channels == in_channels:
        return conv
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
    )
    if not pretrained:
        return new  # nothing learnt to carry over: a freshly initialised conv
    with torch.no_grad():
        w = conv.weight  # (out, 3, kh, kw)
        new.weight.copy_(
            w.sum(1, keepdim=True) if in_channels == 1 else w.mean(1, keepdim=True).repeat(1, in_channels, 1, 1)
        )
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _split(
    name: str, m: nn.Module, num_classes: int, in_channels: int, finetuned_squeezenet: bool, pretrained: bool
) -> Backbone:
    """(body, head) of a torchvision model, the first conv adapted and the classifier replaced."""
    if name.startswith("resnet"):
        m.conv1 = _adapt_first_conv(m.conv1, in_channels, pretrained)
        m.fc = nn.Linear(m.fc.in_features, num_classes)
        body = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4)
        return Backbone(body, nn.Sequential(m.avgpool, nn.Flatten(1), m.fc), "2")
    first = m.features[0][0] if name.startswith("mobilenet") else m.features[0]
    adapted = _adapt_first_conv(first, in_channels, pretrained)
    if name.startswith("mobilenet"):
        m.features[0][0] = adapted
    else:
        m.features[0] = adapted
    if name.startswith("squeezenet"):
        if finetuned_squeezenet:  # the Hanoi report: a 3x3 classifier conv
            m.classifier = nn.Sequential(
                nn.Dropout(0.5), nn.Conv2d(512, num_classes, 3), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)
            )
        else:
            m.classifier[1] = nn.Conv2d(512, num_classes, 1)
        return Backbone(m.features, nn.Sequential(m.classifier, nn.Flatten(1)), "0.1")
    last = len(m.classifier) - 1
    m.classifier[last] = nn.Linear(m.classifier[last].in_features, num_classes)
    return Backbone(m.features, nn.Sequential(m.avgpool, nn.Flatten(1), m.classifier), f"2.{last}")


def _register(reg_name: str, tv_name: str, finetuned_squeezenet: bool = False) -> None:
    @MODELS.register(reg_name)
    def builder(
        num_classes: int, in_channels: int, input_size: tuple[int, int] | None = None, pretrained: str | None = None
    ) -> Backbone:
        if pretrained is not None and (not isinstance(pretrained, str) or not pretrained):
            raise ConfigError(
                f"model.kwargs.pretrained must be a torchvision weights name or a .pth file path, got {pretrained!r}"
            )
        loaded = _load_pretrained(tv_name, pretrained)
        model = _split(tv_name, loaded, num_classes, in_channels, finetuned_squeezenet, pretrained is not None)
        if hasattr(loaded, "pretrained_source"):  # said in log.txt (run.prepare)
            model.pretrained_source = loaded.pretrained_source
        return model

    kind = (
        "the Hanoi report's finetuned SqueezeNet (3x3 classifier conv)"
        if finetuned_squeezenet
        else f"torchvision {tv_name}"
    )
    builder.__doc__ = f"{kind}, new head; model.kwargs.pretrained: a weights name or a .pth file"


for _name in BACKBONES:
    _register(_name, _name)
_register("squeezenet-finetuned", "squeezenet1_0", finetuned_squeezenet=True)
