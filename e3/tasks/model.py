"""The tiny causal LM of the tiny runs, built from a config (no hub download).

The model is a ``transformers`` Llama (RMSNorm, rotary positions, SwiGLU, tied embeddings); at the default
hidden 128 x 4 layers x 4 heads over the 16-symbol vocabulary it has 1.05M parameters. Its supervised warm start
is ``e3.tasks.warm_start``.
"""

from __future__ import annotations

import torch


def build_model(model_cfg: dict, vocab_size: int, max_len: int, seed: int) -> torch.nn.Module:
    """A Llama causal LM from a plain config dict (hidden_size, num_layers, num_heads, intermediate_size)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=int(model_cfg["hidden_size"]),
        intermediate_size=int(model_cfg["intermediate_size"]),
        num_hidden_layers=int(model_cfg["num_layers"]),
        num_attention_heads=int(model_cfg["num_heads"]),
        num_key_value_heads=int(model_cfg["num_heads"]),
        max_position_embeddings=max_len,
        tie_word_embeddings=True,
        pad_token_id=0, bos_token_id=None, eos_token_id=1,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.config.use_cache = False
    return model
