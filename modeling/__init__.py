"""cogvx.modeling: the reference PyTorch modules (pure torch, no onnx/tensorrt)."""
