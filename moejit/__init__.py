"""moejit: quantized Mixture-of-Experts kernels for NVIDIA GPUs, compiled on first use.

Importing this package compiles nothing. The public op surface is :mod:`moejit.ops`; the JIT (arch flags, cache,
locks, the module table) lives in :mod:`moejit.jit`; the command line is ``moejit`` (:mod:`moejit.cli`).
"""

from moejit.errors import MoejitBuildError, MoejitError, MoejitInputError

__version__ = "0.1.0"

__all__ = ["MoejitError", "MoejitBuildError", "MoejitInputError", "__version__"]
