"""OmniCoder: a compact code model and the toolchain that ships it to devices.

This package must stay importable without torch: `omnicoder.runtimes` lives under it and runtime-only
installs carry just onnxruntime + numpy. Import torch-backed pieces from their modules
(`omnicoder.model`, `omnicoder.generate`, ...), never from here.
"""

from omnicoder.config import OmniCoderConfig
from omnicoder.errors import OmniCoderError

__version__ = "0.1.0"

__all__ = ["OmniCoderConfig", "OmniCoderError", "__version__"]
