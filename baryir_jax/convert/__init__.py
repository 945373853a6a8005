"""Official PyTorch BaryIR checkpoints → our Flax parameters (safe unpickling, no torch needed)."""

from baryir_jax.convert.official import ConversionError, torch_to_flax
from baryir_jax.convert.torch_pickle import (
    CheckpointFormatError,
    UnsafeCheckpointError,
    load_torch_checkpoint,
    open_torch_checkpoint,
)

__all__ = [
    "torch_to_flax",
    "load_torch_checkpoint",
    "open_torch_checkpoint",
    "ConversionError",
    "CheckpointFormatError",
    "UnsafeCheckpointError",
]
