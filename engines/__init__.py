"""cogvx.engines: TensorRT build and engine runtime, attention plugins.

Not built yet (see the TensorRT issue). tensorrt is imported lazily there.
"""
