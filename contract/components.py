"""The table of components: one row per exported component, read by export, engines and runtime.

A *component* is what `cogvx export --components` names and what one stage record of an engine
directory holds; a *stage* is what the pipeline calls (runtime/stages.py). The row says, once:

| component    | stage        | source folder | graphs (roles)                 | stage inputs -> outputs                          |
|--------------|--------------|---------------|--------------------------------|--------------------------------------------------|
| text_encoder | text_encoder | text_encoder  | main                           | input_ids -> text_embeddings (always fp32)       |
| transformer  | denoiser     | transformer   | main                           | latents, text_embeddings, timestep, [ofs],       |
|              |              |               |                                | rope_cos, rope_sin / sincos -> velocity          |
| vae_decoder  | vae_decoder  | vae           | first_1, first_2, first_3, next| latents, conv_cache.* -> frames, conv_cache.*    |
| vae_encoder  | vae_encoder  | vae           | main                           | video -> latent_mean, latent_logvar (I2V only)   |

Two differences between a stage's I/O and its graphs' are described here and applied by every
graph stage (runtime/graph_stage.py) and every descriptor (export/descriptors.py) alike:

- *grid inputs*: the stage passes position tables as (V, D); the transformer graph takes them as
  (T', H', W', D) so that every dynamic dimension of the graph is a linear function of the grid
  (`position_grid`).
- *caches*: a streaming component's graphs return their caches under `cache_output_prefix` and
  take them back under `cache_input_prefix`; the first chunk (no cache yet) has one graph per
  chunk length (`first_N`), every later chunk runs `next`.

Adding a component is one row here plus one descriptor in export/descriptors.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cogvx.modeling.precision import Precision

MAIN = "main"  # the role of a component's only graph
NEXT = "next"  # the role of a streaming component's graph for every chunk after the first


@dataclass(frozen=True)
class Cache:
    """How a streaming component carries state from one chunk to the next."""

    input_prefix: str  # graph inputs: the previous chunk's state
    output_prefix: str  # graph outputs: the state for the next chunk
    chunk_input: str  # the input whose `chunk_axis` is the chunk length
    chunk_axis: int

    def first_role(self, length: int) -> str:
        return f"first_{length}"

    def as_input(self, output_name: str) -> str:
        """`conv_cache_out.x` -> `conv_cache.x`: an output fed back as the next chunk's input."""
        return self.input_prefix + output_name.removeprefix(self.output_prefix)


@dataclass(frozen=True)
class Component:
    name: str
    stage: str
    source_folder: str
    inputs: tuple[str, ...]  # every input the stage may receive (optional ones included)
    outputs: tuple[str, ...]  # outputs besides the cache
    grid_inputs: tuple[str, ...] = ()  # (V, D) at the stage, (T', H', W', D) in the graph
    cache: Cache | None = None
    precision: Precision | None = None  # fixed, whatever the export asks (None: as asked)
    extra_folders: tuple[str, ...] = ()  # checkpoint folders copied into the engine directory whole
    image_to_video_only: bool = False
    quantizable: bool = False  # int8 / fp8 exports quantize this component; the others stay fp32
    attention: bool = False  # its graphs hold the attention seam: `cogvx export --attention` picks the form

    def precision_for(self, asked: Precision) -> Precision:
        """The precision this component is exported in when `asked` is."""
        if self.precision is not None:
            return self.precision
        return Precision.FP32 if asked.is_quantized and not self.quantizable else asked

    def role(self, inputs: Mapping[str, object]) -> str:
        """Which graph runs these stage inputs."""
        if self.cache is None:
            return MAIN
        if any(name.startswith(self.cache.input_prefix) for name in inputs):
            return NEXT
        return self.cache.first_role(inputs[self.cache.chunk_input].shape[self.cache.chunk_axis])

    def stage_outputs(self, outputs: dict) -> dict:
        """Graph outputs under the stage's names (caches renamed to be fed back as inputs)."""
        if self.cache is None:
            return outputs
        return {self.cache.as_input(name) if name.startswith(self.cache.output_prefix) else name: value
                for name, value in outputs.items()}


DECODER_CACHE = Cache(input_prefix="conv_cache.", output_prefix="conv_cache_out.", chunk_input="latents",
                      chunk_axis=2)
POSITION_TABLES = ("rope_cos", "rope_sin", "sincos")
# How an attention is written in ONNX (docs/architecture.md, the attention seam): "plugin", one
# cogvx::RoPEAttention3D node (TensorRT plugin, local function body for ONNX Runtime); "standard",
# opset-23 RotaryEmbedding + Attention, no custom node.
ATTENTION_FORMS = ("plugin", "standard")

COMPONENTS: dict[str, Component] = {c.name: c for c in (
    Component("text_encoder", "text_encoder", "text_encoder", inputs=("input_ids",), outputs=("text_embeddings",),
              precision=Precision.FP32,  # T5 overflows in fp16
              extra_folders=("tokenizer",)),
    Component("transformer", "denoiser", "transformer",
              inputs=("latents", "text_embeddings", "timestep", "ofs", *POSITION_TABLES), outputs=("velocity",),
              grid_inputs=POSITION_TABLES, quantizable=True, attention=True),
    Component("vae_decoder", "vae_decoder", "vae", inputs=("latents",), outputs=("frames",), cache=DECODER_CACHE),
    Component("vae_encoder", "vae_encoder", "vae", inputs=("video",), outputs=("latent_mean", "latent_logvar"),
              image_to_video_only=True),
)}
COMPONENT_OF_STAGE = {c.stage: c for c in COMPONENTS.values()}


def required_stages(image_to_video: bool) -> list[str]:
    """The stages a generation needs."""
    return [c.stage for c in COMPONENTS.values() if image_to_video or not c.image_to_video_only]


def position_grid(latent_frames: int, latent_height: int, latent_width: int, patch_size: int,
                  patch_size_t: int | None) -> tuple[int, int, int, int]:
    """The (T', H', W', -1) shape of a (V, D) position table for latents of this size."""
    return (latent_frames // (patch_size_t or 1), latent_height // patch_size, latent_width // patch_size, -1)
