"""Backends: glue between the layers and the kernels of one target."""
