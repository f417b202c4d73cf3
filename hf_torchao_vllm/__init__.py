"""Quantize Hugging Face causal LMs with torchao, inspect and evaluate them, and serve them in vLLM."""
