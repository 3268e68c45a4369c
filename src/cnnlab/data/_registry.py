"""The dataset registry, in a module of its own: the modules that register sources import it from here,
so none of them imports the cnnlab.data package, whose __init__ imports them.

A source is called with the DataConfig and returns a Dataset (see data/base.py, DataSource);
`DATASETS.register("name")(source)` adds one. The order of registration is the order of detection
for sources of the same kind (cnnlab.data.detection_order).
"""

from __future__ import annotations

from cnnlab.registry import Registry

DATASETS: Registry = Registry("dataset")
