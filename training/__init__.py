"""cogvx.training: losses, timestep sampling, datasets and frame pack, trainers, the toy world.

Not built yet (see the training issue). Depends on cogvx.modeling only.
"""
