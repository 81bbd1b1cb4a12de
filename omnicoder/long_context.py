"""Long-context variants: the same weights with RoPE scaling that stretches the trained context.

`extend_context(model, 32768, "yarn")` returns a new model whose config records max_seq_len=32768 and
rope_scaling = {type, factor = 32768 / trained context, original_max_position_embeddings}. The exporters
write that into the graph metadata and the bundle manifest.
"""

from __future__ import annotations

from dataclasses import replace

from omnicoder.config import RopeScaling
from omnicoder.errors import OmniCoderError
from omnicoder.model import OmniCoder

SCALINGS = ("yarn", "linear")


def extend_context(model: OmniCoder, context: int, scaling: str = "yarn") -> OmniCoder:
    config = model.config
    if scaling not in SCALINGS:
        raise OmniCoderError(f"--rope-scaling {scaling} is unknown; use one of {', '.join(SCALINGS)}")
    if config.rope_scaling.type != "none":
        raise OmniCoderError(f"the model already uses {config.rope_scaling.type} RoPE scaling; extend the original")
    if context <= config.max_seq_len:
        raise OmniCoderError(f"--context {context} is not longer than the model's context {config.max_seq_len}")
    rope = RopeScaling(
        type=scaling, factor=context / config.max_seq_len, original_max_position_embeddings=config.max_seq_len
    )
    extended = OmniCoder(replace(config, max_seq_len=context, rope_scaling=rope))
    extended.load_state_dict(model.state_dict())
    return extended.to(next(model.parameters()).dtype).eval()
