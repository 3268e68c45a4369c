"""The model registry, in a module of its own: the modules that register models import it from here,
so none of them imports the cnnlab.models package, whose __init__ imports them (timm's _registry.py).

`@MODELS.register("name")` above a builder adds it; `cnnlab.models.create_model(name, ...)` builds it.
"""

from __future__ import annotations

from cnnlab.registry import Registry

MODELS: Registry = Registry("model")
