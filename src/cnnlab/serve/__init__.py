"""Deploying a trained run: predict on new images, export (ONNX, TorchScript) with a parity check,
and a web demo. predictor.py holds what all three share: an image fed exactly as the run was tested."""
