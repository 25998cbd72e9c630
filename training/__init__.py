"""cogvx.training: losses, timestep sampling, datasets and frame pack, trainers, the toy world.

Depends on cogvx.modeling (and the schedule in cogvx.runtime.schedulers).

    config.py        run files (TOML / YAML) -> TrainConfig: model, data, progressive stages, ...
    losses.py        VAE loss (L1, KL, LPIPS-style, GAN) and the v-prediction loss, text dropout
    discriminator.py the 3D PatchGAN discriminator and hinge losses
    sampling.py      explicit uniform timestep sampling; the per-rank, resumable data order
    pack.py          multi-resolution frame pack through the attention seam's segment ids
    conditioning.py  dataset items -> scaled latents and text embeddings (frozen VAE, T5)
    trainer.py       VAETrainer, TransformerTrainer: stages, DDP / FSDP2, exact resume
    distributed.py   torchrun process group, wrapping, full state dicts
    checkpoints.py   checkpoint-STEP folders in the diffusers layout + training_state.pt
    loss_log.py      loss.jsonl and loss.png
    cli.py           `cogvx train vae|transformer --config run.toml`
    data.py, toy/    datasets (video folder, latent cache) and the toy world
"""
