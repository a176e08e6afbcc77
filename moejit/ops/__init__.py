"""The public op surface of moejit: validated wrappers over ``torch.ops.moejit.*`` and the Triton kernels.

Importing this module compiles nothing; the first call of an op builds (once per machine) or loads the JIT module
that holds it. Every op is CUDA-graph capturable and has a fake implementation for torch.compile.
"""

from moejit.ops.common import moe_align_block_size, moe_permute, moe_problem_sizes, moe_unpermute, silu_and_mul
from moejit.ops.int8 import int8_grouped_mm, int8_hybrid_grouped_mm
from moejit.ops.fp8 import (cutlass_fp8_grouped_mm, fp8_permute_quant, fp8_quant, grouped_mm_config,
                            grouped_mm_k_splits, silu_mul_fp8_quant)
from moejit.moe.cutlass_fp8 import cutlass_moe_fp8
from moejit.routing import fused_topk, grouped_topk
from moejit.int8.quant import (int8_hybrid_permute_quant, int8_hybrid_permute_scales, int8_hybrid_quant,
                               int8_hybrid_silu_quant)
from moejit.moe.int8_hybrid import cutlass_moe_int8_hybrid
from moejit.moe.triton_fp8 import triton_moe_fp8
from moejit.moe.triton_int8 import triton_moe_int8, triton_moe_int8_hybrid
from moejit.moe.weights import quantize_weights_fp8, quantize_weights_int8, quantize_weights_int8_w8a8

__all__ = ["moe_align_block_size", "moe_permute", "moe_problem_sizes", "moe_unpermute", "silu_and_mul"]
__all__ += ["int8_grouped_mm", "int8_hybrid_grouped_mm"]
__all__ += ["cutlass_fp8_grouped_mm", "cutlass_moe_fp8", "fp8_permute_quant", "fp8_quant", "fused_topk",
            "grouped_mm_config", "grouped_mm_k_splits", "grouped_topk", "silu_mul_fp8_quant"]
__all__ += ["cutlass_moe_int8_hybrid", "int8_hybrid_permute_quant", "int8_hybrid_permute_scales",
            "int8_hybrid_quant", "int8_hybrid_silu_quant"]
__all__ += ["triton_moe_fp8"]
__all__ += ["triton_moe_int8", "triton_moe_int8_hybrid"]
__all__ += ["quantize_weights_fp8", "quantize_weights_int8", "quantize_weights_int8_w8a8"]
