"""INT8 hybrid blockwise ("Q/F") quantization: the format's rules (:mod:`moejit.int8.format`), the Triton
quantization kernels (:mod:`moejit.int8.quant`, imported lazily: importing this package needs no Triton) and the
per-channel weight helper (:mod:`moejit.int8.weights`)."""
