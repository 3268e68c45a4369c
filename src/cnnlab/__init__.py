"""cnnlab: image classification with convolutional networks, on PyTorch and torchvision."""

__version__ = "0.1.0"
