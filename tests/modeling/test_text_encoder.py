"""The T5 text encoder on a tiny T5 config with a sentencepiece model trained inside the test."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import torch

from cogvx.modeling.checkpoint import CheckpointError
from cogvx.modeling.configs import TextEncoderConfig
from cogvx.modeling.text_encoder import TextEncoder

CAPTIONS = [f"a {c} {s} moving {d}" for c in ("red", "blue", "green", "yellow")
            for s in ("square", "circle", "triangle") for d in ("left", "right", "up", "down")]
MAX_LENGTH = 16


@pytest.fixture(scope="module")
def t5_checkpoint(tmp_path_factory):
    """A diffusers-layout text_encoder/ + tokenizer/ pair: real sentencepiece model, tiny T5."""
    import sentencepiece as spm
    from transformers import T5EncoderModel

    root = tmp_path_factory.mktemp("t5")
    (root / "tokenizer").mkdir()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CAPTIONS * 5), model_prefix=str(root / "tokenizer" / "spiece"),
        vocab_size=48, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        hard_vocab_limit=False, minloglevel=2,
    )
    (root / "tokenizer" / "spiece.vocab").unlink()
    (root / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "model_max_length": MAX_LENGTH,
         "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}))
    config = TextEncoderConfig(vocab_size=48, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0.0)
    torch.manual_seed(0)
    T5EncoderModel(config.to_transformers()).save_pretrained(root / "text_encoder", max_shard_size="20KB")
    return root


def test_matches_diffusers_prompt_encoding(t5_checkpoint):
    """Same embeddings as diffusers' CogVideoXPipeline._get_t5_prompt_embeds (padded, no mask)."""
    from diffusers import CogVideoXPipeline
    from transformers import AutoTokenizer, T5EncoderModel

    ours = TextEncoder.from_pretrained(t5_checkpoint / "text_encoder", max_length=MAX_LENGTH)
    assert len(list((t5_checkpoint / "text_encoder").glob("*.safetensors"))) > 1  # sharded
    reference = SimpleNamespace(
        tokenizer=AutoTokenizer.from_pretrained(t5_checkpoint / "tokenizer"),
        text_encoder=T5EncoderModel.from_pretrained(t5_checkpoint / "text_encoder"),
    )
    prompts = ["a red square moving right", "a blue circle moving up", ""]
    got = ours.encode_prompt(prompts)
    expected = CogVideoXPipeline._get_t5_prompt_embeds(
        reference, prompts, max_sequence_length=MAX_LENGTH, device=torch.device("cpu"), dtype=torch.float32
    )
    assert got.shape == (3, MAX_LENGTH, 32)
    # relative to the embeddings' scale: fp32 rounding differs by CPU (AVX2 vs AVX-512 kernels) at ~1e-7
    assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
    # the pad rows are real encoder outputs, not zeros: the model attends to them
    assert got[0, -1].abs().max().item() > 1e-3


def test_truncation_warns_with_count(t5_checkpoint, caplog):
    encoder = TextEncoder.from_pretrained(t5_checkpoint / "text_encoder", max_length=MAX_LENGTH)
    long_prompt = " ".join(CAPTIONS[:4])
    total = encoder.count_tokens(long_prompt)
    assert total > MAX_LENGTH
    with caplog.at_level(logging.WARNING):
        embeddings = encoder.encode_prompt(long_prompt)
    assert embeddings.shape == (1, MAX_LENGTH, 32)
    assert f"dropped {total - MAX_LENGTH} tokens" in caplog.text


def test_bf16_and_missing_folder(t5_checkpoint, tmp_path):
    fp32 = TextEncoder.from_pretrained(t5_checkpoint / "text_encoder", max_length=MAX_LENGTH)
    bf16 = TextEncoder.from_pretrained(t5_checkpoint / "text_encoder", dtype=torch.bfloat16, max_length=MAX_LENGTH)
    low, high = bf16.encode_prompt("a red square moving left"), fp32.encode_prompt("a red square moving left")
    assert low.dtype == torch.bfloat16
    assert (low.float() - high).abs().max().item() <= 5e-2 * high.abs().max().item()
    with pytest.raises(CheckpointError, match="text_encoder/config.json"):
        TextEncoder.from_pretrained(tmp_path / "text_encoder")
