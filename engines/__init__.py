"""cogvx.engines: the engine directory (`cogvx export`), the fast path for NVIDIA GPUs, TensorRT.

- export_dir.py: checkpoint -> engine directory (ONNX graphs + manifest), content-keyed;
- triton_attention.py + attention.py: the Triton RoPE flash-attention kernel, the seam's CUDA
  implementation in torch (`cogvx generate --attention auto|reference`);
- tensorrt_build.py, tensorrt_runtime.py, plugin.py, cli.py: `cogvx build` (plans recorded in the
  manifest), the TensorRT runner for GraphStage, the attention plugin;
- torch_trt.py: torch-tensorrt for the transformer, the attention kept fused (plugin or IAttention).

triton and tensorrt are imported lazily, inside the functions that need them.
"""
