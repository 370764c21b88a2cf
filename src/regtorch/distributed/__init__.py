"""Penalties on FSDP2-sharded parameters: local work on shards, batched all-reduces.

Nothing here is imported until a ``DTensor`` is seen (:mod:`regtorch.distributed._detect`).
"""
