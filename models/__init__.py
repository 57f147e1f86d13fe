"""Shipped model weights (safetensors) and their model cards; installed as vaecodec.weights."""
