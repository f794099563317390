"""File formats read without loading a model: safetensors and GGUF headers.

The bottom layer with ``errors``, ``events``, ``settings`` and ``noise``: it imports nothing else
of llmlab's. Every check of a weight file before it is opened goes through here, so a truncated or
foreign file fails the same way, with its name, wherever it is met.
"""
