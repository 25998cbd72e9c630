"""Text-to-video and image-to-video generation over stages (runtime/stages.py).

prompt -> text_encoder stage -> N x denoiser stage (CFG) -> streaming vae_decoder stage -> uint8
frames. The numbers follow diffusers' `CogVideoXPipeline` / `CogVideoXImageToVideoPipeline`
(same random draws in the same order for the same generator), which the tests check.

Letters: B videos, F latent frames, C latent channels, h, w latent size, T, H, W video size.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cogvx.contract.components import COMPONENT_OF_STAGE, DECODER_CACHE, required_stages
from cogvx.contract.shapes import ProfileError, ShapeProfile, ShapeSpec
from cogvx.errors import CogvxError, NonFiniteError
from cogvx.modeling.checkpoint import CheckpointError
from cogvx.modeling.memory import check_fits
from cogvx.modeling.configs import ConfigError, ModelConfig, check_video_size, latent_frames
from cogvx.modeling.model_dir import load_model_config
from cogvx.modeling.text_encoder import tokenize_prompts
from cogvx.modeling.vae import DECODE_CHUNK, chunk_bounds

from .denoise import denoise
from .schedulers import make_scheduler
from .stages import Stage, torch_stages

logger = logging.getLogger(__name__)

COMPONENT_FOLDERS = ("transformer", "vae", "scheduler", "text_encoder", "tokenizer")
SIZE_LIMIT = 8  # frames / height / width beyond this multiple of the model's own size are refused
MAX_IMAGE_PIXELS = 8192 * 8192  # a conditioning image larger than this is a mistake or a decompression bomb


class PipelineInputError(CogvxError):
    """A generation request that cannot run as asked; the message says what to change."""


@dataclass
class GenerationOutput:
    frames: np.ndarray | torch.Tensor  # np: uint8 (B, T, H, W, 3); pt: float (B, T, 3, H, W) in [0, 1]
    fps: int
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(B, 3, T, H, W) in [-1, 1] -> uint8 (B, T, H, W, 3): `round(clamp(x / 2 + 0.5, 0, 1) * 255)`."""
    video = (video.float() / 2 + 0.5).clamp(0, 1)
    return (video * 255).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()


class CogVideoXPipeline:
    """`pipe(prompt, ...) -> GenerationOutput`; every model stage is a `Stage` from any backend."""

    def __init__(self, config: ModelConfig, stages: dict[str, Stage], tokenizer=None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.config = config
        self.stages = stages
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.device = torch.device(device)
        self.modules: dict[str, torch.nn.Module] = {}  # the torch modules behind the stages, when known

    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu", text_encoder: bool = True) -> CogVideoXPipeline:
        """Read a diffusers-layout checkpoint folder (model_index.json + component folders)."""
        from cogvx.modeling.text_encoder import TextEncoder
        from cogvx.modeling.transformer import CogVideoXTransformer
        from cogvx.modeling.vae import CogVideoXVAE

        directory = Path(directory)
        if not (directory / "model_index.json").is_file() and directory.is_dir():
            raise CheckpointError(f"{directory} has no model_index.json: not a CogVideoX checkpoint in the "
                                  "diffusers layout (model_index.json + transformer/, vae/, scheduler/, ...)")
        needed = COMPONENT_FOLDERS if text_encoder else COMPONENT_FOLDERS[:3]
        missing = [name for name in needed if not (directory / name).is_dir()]
        if missing and directory.is_dir():
            raise CheckpointError(
                f"{directory} is missing component folder(s) {', '.join(f'{m}/' for m in missing)}; "
                "a CogVideoX checkpoint in the diffusers layout has transformer/, vae/, scheduler/, "
                "text_encoder/ and tokenizer/"
            )
        config = load_model_config(directory)
        transformer = CogVideoXTransformer.from_pretrained(directory / "transformer", dtype).to(device)
        vae = CogVideoXVAE.from_pretrained(directory / "vae", dtype).to(device)
        encoder = None
        if text_encoder:
            # T5 overflows in fp16 (inf embeddings); it is cheap next to the transformer, so run it in fp32.
            text_dtype = torch.float32 if dtype == torch.float16 else dtype
            encoder = TextEncoder.from_pretrained(directory / "text_encoder", directory / "tokenizer",
                                                  text_dtype, transformer.config.max_text_seq_length)
            encoder.model.to(device)
        pipe = cls(config, torch_stages(encoder, transformer, vae), encoder.tokenizer if encoder else None,
                   dtype, device)
        pipe.modules = {"transformer": transformer, "vae": vae}  # the reference modules, for calibration
        return pipe

    @classmethod
    def from_engines(cls, engine_dir: str | Path, model_dir: str | Path | None = None,
                     providers: list[str] | None = None, device: torch.device | str = "cpu",
                     open_stages=None) -> CogVideoXPipeline:
        """Stages from an engine directory on ONNX Runtime, or on whatever backend `open_stages(dir) ->
        (stages, manifest)` opens (e.g. cogvx.engines.tensorrt_runtime.tensorrt_stages); stages it lacks
        come from the torch checkpoint at `model_dir` when given (e.g. T5 in torch, the rest as engines)."""
        from cogvx.contract.manifest import EngineDirectoryError
        from cogvx.runtime.onnxruntime_backend import onnxruntime_stages

        engine_dir = Path(engine_dir)
        stages, manifest = open_stages(engine_dir) if open_stages else onnxruntime_stages(engine_dir, providers)
        config = manifest.model_config()
        denoiser = stages.get("denoiser")
        dtype = denoiser.precision.torch_dtype if denoiser is not None else torch.float32
        tokenizer = None
        if (engine_dir / "tokenizer").is_dir():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(engine_dir / "tokenizer")
        missing = [name for name in required_stages(config.image_to_video) if name not in stages]
        if missing and model_dir is None:
            raise EngineDirectoryError(f"{engine_dir} has no engines for {', '.join(missing)}; export them "
                                       "(cogvx export --components ...) or pass the checkpoint (--model) to run "
                                       "them in torch")
        if missing:
            # the stages run in torch must come from the checkpoint the engines came from (its weights)
            components = [COMPONENT_OF_STAGE[name] for name in missing]
            manifest.check_source(model_dir, sorted({folder for c in components
                                                     for folder in (c.source_folder, *c.extra_folders)}))
            reference = cls.from_pretrained(model_dir, dtype=dtype, device=device,
                                            text_encoder="text_encoder" in missing)
            stages |= {name: reference.stages[name] for name in missing}
            tokenizer = tokenizer or reference.tokenizer
        logger.info("stages: %s", {name: type(stage).__name__ for name, stage in stages.items()})
        return cls(engines_model_config(manifest), stages, tokenizer, dtype, device)

    def check_profiles(self, batch: int, num_frames: int, height: int, width: int) -> None:
        """Refuse a request outside any engine stage's shape profile, before any run."""
        check_profiles([stage.profile for stage in self.stages.values()],
                       ShapeSpec(batch, num_frames, height, width, self.config.max_text_len))

    # -- text --------------------------------------------------------------------------------------

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(B,) strings -> (B, L, Dt) through the text_encoder stage; warns on truncation."""
        if self.tokenizer is None or "text_encoder" not in self.stages:
            raise PipelineInputError("this pipeline has no text encoder; pass prompt_embeds instead of a prompt")
        ids = tokenize_prompts(self.tokenizer, prompts, self.config.max_text_len)  # (B, L)
        with self._timed("text_encoder"):
            embeddings = self.stages["text_encoder"](input_ids=ids.to(self.device))["text_embeddings"].to(self.dtype)
        return check_finite(embeddings, "the text encoder", "T5 overflows in float16: run it in float32 or bfloat16")

    # -- validation --------------------------------------------------------------------------------

    def check_request(self, prompt, image, num_frames, height, width, steps, guidance, scheduler, prompt_embeds,
                      batch: int = 1, seed: int | None = None):
        if prompt is None and prompt_embeds is None:
            raise PipelineInputError("give a prompt (or prompt_embeds)")
        check_request(self.config, batch=batch, num_frames=num_frames, height=height, width=width, steps=steps,
                      guidance=guidance, scheduler=scheduler, image=image is not None, device=self.device,
                      dtype=self.dtype, seed=seed)

    # -- generation --------------------------------------------------------------------------------

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] = "",
        image=None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 6.0,
        use_dynamic_cfg: bool = False,
        scheduler: str = "ddim",
        generator: torch.Generator | None = None,
        seed: int | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "np",
        on_step: Callable[[int, int, torch.Tensor], None] | None = None,
    ) -> GenerationOutput:
        c = self.config
        num_frames, height, width = request_size(c, num_frames, height, width)
        if prompt_embeds is not None:
            requested = prompt_embeds.shape[0]
        else:
            requested = 1 if isinstance(prompt, str) else len(prompt or [])
        self.check_request(prompt, image, num_frames, height, width, num_inference_steps, guidance_scale,
                           scheduler, prompt_embeds, batch=max(1, requested), seed=seed)
        if output_type not in ("np", "pt", "latent"):
            raise PipelineInputError(f"output_type must be 'np', 'pt' or 'latent' (got {output_type!r})")
        if generator is not None and seed is not None:
            raise PipelineInputError("give a generator or a seed, not both")
        if generator is None:
            generator = torch.Generator(device="cpu").manual_seed(0 if seed is None else seed)
        self.check_profiles(requested, num_frames, height, width)
        self.seconds: dict[str, float] = {}

        # 1. text
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds = self.encode_prompts(prompts)
        batch = prompt_embeds.shape[0]
        guided = guidance_scale > 1.0
        if guided and negative_prompt_embeds is None:
            negatives = [negative_prompt] * batch if isinstance(negative_prompt, str) else list(negative_prompt)
            negative_prompt_embeds = self.encode_prompts(negatives)
        text = prompt_embeds.to(self.device, self.dtype)
        if guided:
            text = torch.cat([negative_prompt_embeds.to(self.device, self.dtype), text])  # (2B, L, Dt)

        # 2. schedule and starting noise; 1.5 pads the latent frames to a multiple of its temporal patch
        sampler = make_scheduler(scheduler, c.scheduler)
        sampler.set_timesteps(num_inference_steps, device=self.device)
        frames = latent_frames(num_frames, c.vae.temporal_compression)
        p_t = c.transformer.patch_size_t or 1
        extra_frames = (p_t - frames % p_t) % p_t
        frames += extra_frames
        h, w = height // c.vae.spatial_compression, width // c.vae.spatial_compression
        channels = c.vae.latent_channels
        image_latents = None
        if c.image_to_video:
            image_latents = self.image_latents(image, batch, frames, height, width, generator)
        latents = torch.randn((batch, frames, channels, h, w), generator=generator,
                              device=generator.device, dtype=self.dtype).to(self.device)  # (B, F, C, h, w)
        latents = latents * sampler.init_noise_sigma

        # 3. denoise
        denoiser_inputs = {"text_embeddings": text,
                           **{k: v for k, v in self.position_inputs(frames, h, w).items() if v is not None}}
        if c.transformer.ofs_embed_dim:
            denoiser_inputs["ofs"] = torch.full((text.shape[0],), 2.0, device=self.device, dtype=self.dtype)

        def denoiser(model_input: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            return self.stages["denoiser"](latents=model_input, timestep=timestep, **denoiser_inputs)["velocity"]

        with self._timed("denoiser"):
            latents = denoise(denoiser, latents, sampler, guidance_scale, use_dynamic_cfg, image_latents,
                              generator, on_step)
        latents = latents[:, extra_frames:]
        if output_type == "latent":
            return GenerationOutput(latents, c.fps, self.seconds)

        # 4. streaming decode: bounded memory, frames converted as each chunk lands
        video_chunks = []
        with self._timed("vae_decoder"):
            for chunk in self.decode_stream(latents):
                video_chunks.append(torch.from_numpy(to_uint8(chunk)) if output_type == "np" else
                                    (chunk.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4).cpu())
        video = torch.cat(video_chunks, dim=1)
        return GenerationOutput(video.numpy() if output_type == "np" else video, c.fps, self.seconds)

    def position_inputs(self, frames: int, h: int, w: int) -> dict[str, torch.Tensor | None]:
        from cogvx.modeling.positions import position_tables

        return position_tables(self.config.transformer, frames, h, w, self.device)._asdict()

    def image_latents(self, image, batch: int, frames: int, height: int, width: int,
                      generator: torch.Generator) -> torch.Tensor:
        """The conditioning image as latents (B, F, C, h, w): encoded, scaled, zero-padded in time."""
        c = self.config
        pixels = prepare_image(image, height, width).to(self.device, self.dtype)  # (3, H, W)
        samples = []
        with self._timed("vae_encoder"):
            for _ in range(batch):
                out = self.stages["vae_encoder"](video=pixels[None, :, None])  # (1, 3, 1, H, W)
                mean = check_finite(out["latent_mean"], "the VAE encoder", "encode in float32 or bfloat16")
                logvar = out["latent_logvar"].clamp(-30.0, 20.0)
                noise = torch.randn(mean.shape, generator=generator, device=generator.device,
                                    dtype=mean.dtype).to(mean.device)
                samples.append(mean + torch.exp(0.5 * logvar) * noise)  # (1, C, 1, h, w)
        latents = torch.cat(samples).to(self.dtype).permute(0, 2, 1, 3, 4)  # (B, 1, C, h, w)
        scale = c.vae.scaling_factor
        latents = latents / scale if c.vae.invert_scale_latents else latents * scale
        padding = latents.new_zeros((batch, frames - 1, *latents.shape[2:]))
        return torch.cat([latents, padding], dim=1)  # (B, F, C, h, w)

    def decode_stream(self, latents: torch.Tensor):
        """(B, F, C, h, w) -> yields video chunks (B, 3, T_k, H, W) in [-1, 1], carrying the conv cache."""
        latents = latents.permute(0, 2, 1, 3, 4) / self.config.vae.scaling_factor  # (B, C, F, h, w)
        cache: dict[str, torch.Tensor] = {}
        for start, end in chunk_bounds(latents.shape[2], DECODE_CHUNK):
            out = self.stages["vae_decoder"](latents=latents[:, :, start:end], **cache)
            cache = {name: t for name, t in out.items() if name.startswith(DECODER_CACHE.input_prefix)}
            yield check_finite(out["frames"], f"the VAE decoder (latent frames {start} to {end - 1})",
                               "decode in float32 or bfloat16; an engine doing this fails `cogvx validate`")

    @contextmanager
    def _timed(self, stage: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def engines_model_config(manifest) -> ModelConfig:
    """The model of an engine directory, its default video the one its denoiser was exported for."""
    config = manifest.model_config()
    record = manifest.stages.get("transformer")
    if record is not None:
        opt = ShapeProfile.from_dict(record.profile).opt
        config = dataclasses.replace(config, num_frames=opt.frames, height=opt.height, width=opt.width)
    return config


def check_profiles(profiles: list[ShapeProfile | None], spec: ShapeSpec) -> None:
    """Refuse a request outside any of the profiles (None: a stage that takes any shape)."""
    for profile in profiles:
        if profile is not None:
            try:
                profile.check(spec)
            except ProfileError as error:
                raise PipelineInputError(str(error)) from None


def check_finite(tensor: torch.Tensor, stage: str, advice: str) -> torch.Tensor:
    """`tensor`, or a NonFiniteError naming the stage: a NaN never becomes a black video silently."""
    if not torch.isfinite(tensor).all():
        raise NonFiniteError(f"{stage} gave NaN or inf; {advice}")
    return tensor


def request_size(config: ModelConfig, num_frames: int | None, height: int | None,
                 width: int | None) -> tuple[int, int, int]:
    """The video size asked for, the model's default where a value was not given (None; a 0 is an
    error, not a request for the default)."""
    return (config.num_frames if num_frames is None else num_frames, config.height if height is None else height,
            config.width if width is None else width)


def check_request(config: ModelConfig, *, batch: int, num_frames: int, height: int, width: int, steps: int,
                  guidance: float, scheduler: str, image: bool, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32, seed: int | None = None) -> None:
    """Everything about a generation request that can be checked from the configs alone: cheap, so
    the CLI runs it before any model loads. Sizes are refused when the machine cannot hold them."""
    try:
        latent_frames(num_frames, config.vae.temporal_compression)
        check_video_size(height, width, 8 * config.transformer.patch_size)
    except ConfigError as error:
        raise PipelineInputError(str(error)) from None
    trained = {"frames": (num_frames, config.transformer.sample_frames),
               "height": (height, config.vae.spatial_compression * config.transformer.sample_height),
               "width": (width, config.vae.spatial_compression * config.transformer.sample_width)}
    for name, (value, size) in trained.items():
        if value > SIZE_LIMIT * size:
            raise PipelineInputError(f"{name} {value} is more than {SIZE_LIMIT}x the {size} this model was made for; "
                                     "attention grows with the square of the tokens and would run for hours")
    if not 1 <= steps <= config.scheduler.num_train_timesteps:
        raise PipelineInputError(f"steps must be between 1 and {config.scheduler.num_train_timesteps} (got {steps}); "
                                 "50 is the reference setting")
    if not (math.isfinite(guidance) and guidance >= 0):
        raise PipelineInputError(f"guidance must be a finite number >= 0 (got {guidance}); 6.0 is the reference "
                                 "setting, 1 or less turns guidance off")
    if scheduler not in ("ddim", "dpm"):
        raise PipelineInputError(f"scheduler must be 'ddim' or 'dpm' (got {scheduler!r})")
    if seed is not None and not -2**63 <= seed < 2**64:
        raise PipelineInputError(f"seed must be a 64-bit number (got {seed}); any value from 0 to 2**63 will do")
    if config.image_to_video and not image:
        raise PipelineInputError(f"{config.name} is an image-to-video model: give an image (--image FILE)")
    if not config.image_to_video and image:
        raise PipelineInputError(f"{config.name} is a text-to-video model and takes no image; drop --image")
    check_fits(peak_bytes_lower_bound(config, batch, num_frames, height, width, dtype),
               f"a {batch}x{num_frames}x{height}x{width} video", device,
               advice="ask for fewer frames or a smaller size")


def peak_bytes_lower_bound(config: ModelConfig, batch: int, num_frames: int, height: int, width: int,
                           dtype: torch.dtype = torch.float32) -> int:
    """Memory a generation certainly allocates besides the weights: the uint8 video, plus the larger of
    the first decoder block's activations over one streamed chunk (a convolution's input and
    output) and the transformer's residual, q, k and v for the CFG batch, which coexist in attention."""
    vae, t = config.vae, config.transformer
    element = torch.empty((), dtype=dtype).element_size()
    video = batch * num_frames * height * width * 3
    decoder = 2 * batch * vae.block_out_channels[0] * DECODE_CHUNK * vae.temporal_compression * height * width
    frames = latent_frames(num_frames, vae.temporal_compression)
    grid = -(-frames // (t.patch_size_t or 1)) * (height // vae.spatial_compression // t.patch_size) * (
        width // vae.spatial_compression // t.patch_size)
    transformer = 4 * 2 * batch * (t.max_text_seq_length + grid) * t.hidden_size
    return video + max(decoder, transformer) * element


def prepare_image(image, height: int, width: int) -> torch.Tensor:
    """A PIL image, a path, a uint8 array (H, W, 3) or a tensor (3, H, W) in [-1, 1] -> (3, H, W) in [-1, 1]."""
    from PIL import Image

    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise PipelineInputError(f"an image tensor must be (3, H, W) in [-1, 1] (got {tuple(image.shape)})")
        return torch.nn.functional.interpolate(image[None].float(), size=(height, width), mode="bilinear")[0] \
            if image.shape[1:] != (height, width) else image
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise PipelineInputError(f"image file {path} does not exist")
        try:
            image = Image.open(path)  # reads the header only: the size is known before any pixel
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise PipelineInputError(f"image {path} is {image.width}x{image.height}; cogvx reads images of at "
                                         f"most {MAX_IMAGE_PIXELS:,} pixels (it resizes to {width}x{height} anyway)")
            image.load()
        except (OSError, Image.DecompressionBombError) as error:
            raise PipelineInputError(f"cannot read image {path} ({error}); give a PNG or JPEG") from None
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise PipelineInputError(f"unsupported image type {type(image).__name__}; give a file, PIL image or tensor")
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.LANCZOS)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, H, W)
    return pixels * 2 - 1
