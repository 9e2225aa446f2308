"""The HTTP surface: inference (/v1), the Open Inference Protocol (/v2), admin, health, playground.

Layers, each importing only those below it: api -> controlplane -> dataplane -> tasks -> the
shared modules at the package root (errors, settings, schemas, config, artifacts).
"""
