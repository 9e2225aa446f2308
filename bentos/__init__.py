"""Switchyard's serving stack: everything `service.py` declares lives here.

Nothing in this package imports torch or transformers: a bento serves ONNX with
onnxruntime and tokenizers alone.
"""
