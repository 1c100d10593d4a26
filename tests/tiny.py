"""Tiny random-init causal LMs for the unit tier (seconds, no downloads)."""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM


def tiny_llama(vocab: int, *, tie: bool = True, max_positions: int = 64) -> LlamaForCausalLM:
    """2 layers, hidden 32. Untie the embeddings when a test needs the LM head to train."""
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, pad_token_id=0))


def tiny_gpt2(vocab: int) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4,
                                      n_positions=64, bos_token_id=2, eos_token_id=2))
