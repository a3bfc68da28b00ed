"""Backend fixtures: a tiny random Llama with a character tokenizer (offline, ~0.1 s per call),
and the embedded SmolLM2 model for the few ``slow`` tests."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import pytest

CHAT_TEMPLATE = (
    "{% if greeting is defined %}{{ greeting }}\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer() -> Any:
    """Printable characters plus a few multi-character tokens, no pad token (on purpose)."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    words = ["hello", " world", "the", "ing", " and"]
    vocab = [("<unk>", 0.0), ("<|im_start|>", 0.0), ("<|im_end|>", 0.0)]
    vocab += [(c, -2.0) for c in chars] + [(w, -1.0) for w in words]
    backend = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=False))
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_model(vocab_size: int, seed: int = 0) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # sharper than the 0.02-std init, so samples are not uniform noise
        model.lm_head.weight.mul_(40)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer: Any) -> Any:
    return build_tiny_model(len(tiny_tokenizer))


@pytest.fixture(scope="session")
def tiny_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Any, tiny_tokenizer: Any
) -> Path:
    """The tiny model saved as an ordinary checkpoint folder, for load-by-path tests."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny_backend(tiny_model: Any, tiny_tokenizer: Any) -> Any:
    from cat_plugins.backends.transformers_backend import TransformersBackend

    return TransformersBackend.from_model(tiny_model, tiny_tokenizer)


@pytest.fixture(scope="session")
def embedded_backend() -> Any:
    """SmolLM2-135M-Instruct in fp32 on CPU (converted into the user cache on first use)."""
    from cat_plugins.backends.transformers_backend import TransformersBackend

    backend = TransformersBackend({"model": "default", "device": "cpu", "dtype": "float32"})
    yield backend
    backend.close()
