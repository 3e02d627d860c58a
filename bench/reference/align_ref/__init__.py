"""PyTorch reference implementation of align's Shapes-world models (see ``models.py``)."""

from .models import (
    Condition,
    DiT,
    LoRALinear,
    ShapesModelRef,
    TextEncoder,
    UNet,
    load_shapes_model,
    sincos_positions,
    timestep_embedding,
)

__all__ = [
    "Condition",
    "DiT",
    "LoRALinear",
    "ShapesModelRef",
    "TextEncoder",
    "UNet",
    "load_shapes_model",
    "sincos_positions",
    "timestep_embedding",
]
