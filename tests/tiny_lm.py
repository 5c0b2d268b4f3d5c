"""A tiny random causal LM with a character-level tokenizer and a chat template, saved as a transformers
directory: for inference tests without the hub (import as ``from tiny_lm import save_tiny_lm``). With ``bos=True``
the tokenizer adds a BOS ``<s>`` to every encoded text and the chat template writes one too, as the
DeepSeek-R1-Distill (Llama/Qwen) tokenizers do: text rendered by the template must be encoded without special
tokens, or the model sees two BOS."""

from __future__ import annotations

import string
from pathlib import Path

SPECIAL = ["<pad>", "<unk>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
BOS = "<s>"


def build_tokenizer(bos: bool = False):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    special = SPECIAL + ([BOS] if bos else [])
    vocab = {tok: i for i, tok in enumerate(special + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(special)
    if not bos:
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>",
                                       chat_template=CHAT_TEMPLATE)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                       special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>",
                                   bos_token=BOS, chat_template="{{ bos_token }}" + CHAT_TEMPLATE)


def save_tiny_lm(path, seed: int = 0, hidden: int = 32, layers: int = 2, bos: bool = False) -> Path:
    """Save a random Llama (``hidden`` wide, ``layers`` deep) and its tokenizer (``build_tokenizer(bos)``)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tok = build_tokenizer(bos)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=4096, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.bos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path
