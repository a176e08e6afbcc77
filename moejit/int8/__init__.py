"""INT8 hybrid blockwise ("Q/F") quantization: the format's rules (:mod:`moejit.int8.format`), the Triton
quantization kernels (:mod:`moejit.int8.quant`, imported lazily: importing this package needs no Triton). The
per-channel weight helper, :func:`moejit.ops.quantize_weights_int8`, lives with the other weight quantizers in
:mod:`moejit.moe.weights`."""
