"""Switchyard's model build pipeline: train -> export -> optimize -> validate -> benchmark -> register.

Run `python -m models --help`. Heavy imports (torch, transformers) happen inside the
stages that need them, so `list` and `verify` stay quick.
"""
