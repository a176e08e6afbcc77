"""Float32 torch references for every moejit op and for whole MoE layers (plain, and simulating quantization).

They run anywhere torch runs (CPU or GPU) and are what the tests and the benchmark's error column compare against.
"""

from moejit.reference.core import (dequant_weight_ref, moe_permute_ref, moe_problem_sizes_ref, moe_qdq_ref,
                                   moe_ref, moe_unpermute_ref, rel_error, silu_and_mul_ref)
from moejit.reference.fp8 import (FP8_DTYPE, FP8_MAX, MIN_SCALE, fp8_dequant_ref, fp8_quant_ref, moe_fp8_ref,
                                  quantize_weights_fp8_ref)
from moejit.reference.routing import fused_topk_ref, grouped_topk_ref
from moejit.reference.int8 import (int8_act_qdq_ref, int8_block_dequant_ref, int8_block_quant_ref, int8_dequant_ref,
                                   int8_hybrid_dequant_ref, int8_hybrid_grouped_mm_ref, int8_hybrid_mm_ref,
                                   int8_hybrid_quant_ref, int8_quant_ref, int8_quant_w8a8_ref,
                                   moe_int8_hybrid_fused_ref, moe_int8_hybrid_ref, moe_int8_ref, moe_int8_w8a8_ref,
                                   quantize_weights_int8_ref, w8a8_round_ref, w8a8_scale_ref)

__all__ = [
    "FP8_DTYPE", "FP8_MAX", "MIN_SCALE", "dequant_weight_ref", "fp8_dequant_ref", "fp8_quant_ref", "moe_fp8_ref",
    "moe_permute_ref", "moe_problem_sizes_ref", "moe_qdq_ref", "moe_ref", "moe_unpermute_ref", "quantize_weights_fp8_ref",
    "rel_error", "silu_and_mul_ref",
]
__all__ += ["fused_topk_ref", "grouped_topk_ref"]
__all__ += [
    "int8_act_qdq_ref", "int8_block_dequant_ref", "int8_block_quant_ref", "int8_dequant_ref",
    "int8_hybrid_dequant_ref", "int8_hybrid_grouped_mm_ref", "int8_hybrid_mm_ref", "int8_hybrid_quant_ref",
    "int8_quant_ref", "int8_quant_w8a8_ref", "moe_int8_hybrid_fused_ref", "moe_int8_hybrid_ref", "moe_int8_ref",
    "moe_int8_w8a8_ref",
    "quantize_weights_int8_ref", "w8a8_round_ref", "w8a8_scale_ref",
]
