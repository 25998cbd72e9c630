"""cogvx.export: shape profiles, per-component ONNX export descriptors, the attention custom op.

Not built yet (see the ONNX export issue). Depends on cogvx.modeling only.
"""
