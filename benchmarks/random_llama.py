"""A random Llama saved as an ordinary model folder, for the benchmarks that need no download.

The tests' character tokenizer goes with it (``build_tiny_tokenizer``); ``vocab`` overrides its
size where the vocabulary's width is what is measured (a 49k vocabulary like SmolLM2's).
"""

from __future__ import annotations

from pathlib import Path


def build_random_llama(
    path: Path,
    *,
    hidden: int,
    layers: int,
    vocab: int | None = None,
    tie: bool = False,
    max_positions: int = 512,
) -> int:
    """Save the model and tokenizer under ``path``; returns the parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.plugins.backends.conftest import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    heads = max(1, hidden // 64)
    config = LlamaConfig(
        vocab_size=vocab or len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())
