"""cogvx.calibration: observers, calibration over denoising trajectories, Q/DQ insertion.

Not built yet (see the quantization issue). Depends on cogvx.modeling and cogvx.export.
"""
