"""Shapes, scale modes, weights and the layer runner shared by the Triton FP8 and INT8 layer GPU tests
(tests/test_triton_fp8_gpu.py, tests/test_triton_int8_gpu.py): the two layers share a pipeline, so their tests
share the cases; each file passes its layer, quantizer, reference and quantization range."""

import torch

# (E, topk, K = hidden, N = intermediate per shard)
SHAPES = {
    "mixtral-8x7b": (8, 2, 4096, 14336),
    "qwen3.6-35b-a3b": (256, 8, 2048, 512),
    "deepseek-v3-tp8": (256, 8, 7168, 256),
}
MODES = {  # name: (per_act_token, per_out_ch, block_shape, static activation scales)
    "token_channel": (True, True, None, False),
    "tensor_tensor": (False, False, None, False),
    "static_tensor": (False, False, None, True),
    "tensor_channel": (False, True, None, False),
    "block128": (False, False, (128, 128), False),
}


def cuda_generator() -> torch.Generator:
    """A CUDA generator with a fresh seed, printed so a failure can be replayed."""
    seed = torch.randint(0, 2**31 - 1, ()).item()
    print(f"seed={seed}")
    return torch.Generator(device="cuda").manual_seed(seed)


class WeightCache:
    """Float weights (scaled like a trained layer: unit-variance outputs) and their quantization by ``quantize(w,
    per_out_ch, block_shape) -> (w_q, scale)``, cached per model and layout (one model's float weights at a time)."""

    def __init__(self, quantize):
        self.quantize = quantize
        self.entries: dict = {}

    def __call__(self, name, gen, per_out_ch, block_shape):
        e, _, k, n = SHAPES[name]
        if name not in self.entries:
            self.entries.clear()
            w1 = torch.randn(e, 2 * n, k, device="cuda", generator=gen) / k ** 0.5
            w2 = torch.randn(e, k, n, device="cuda", generator=gen) / n ** 0.5
            self.entries[name] = {"float": (w1, w2)}
        key = (per_out_ch, block_shape)
        if key not in self.entries[name]:
            w1, w2 = self.entries[name]["float"]
            self.entries[name][key] = (self.quantize(w1, per_out_ch, block_shape),
                                       self.quantize(w2, per_out_ch, block_shape))
        return self.entries[name]["float"], self.entries[name][key]


def routing(m, e, topk, gen, dtype=torch.int32):
    """Top-k of softmaxed random scores, renormalized: distinct experts per token."""
    scores = torch.rand(m, e, device="cuda", generator=gen)
    weights, ids = torch.topk(torch.softmax(scores, dim=-1), topk, dim=-1)
    return weights / weights.sum(dim=-1, keepdim=True), ids.to(dtype)


def run_layer(layer, reference, weights, q_max, name, mode, m, gen, dtype=torch.bfloat16, ids_override=None,
              topk=None, out_dtype=None):
    """Run ``layer`` on fresh inputs of model ``name`` in scale ``mode``; returns ``(out, reference output,
    (a, w1 float, w2 float, topk_weights, topk_ids))``. Static scales: ``amax/q_max`` for the input and a plausible
    calibrated ``4/q_max`` for the intermediate."""
    e, default_topk, k, n = SHAPES[name]
    topk = topk or default_topk
    per_token, per_ch, block, static = MODES[mode]
    (w1f, w2f), ((w1, s1), (w2, s2)) = weights(name, gen, per_ch, block)
    a = torch.randn(m, k, device="cuda", generator=gen).to(dtype)
    tw, ids = routing(m, e, topk, gen)
    if ids_override is not None:
        ids = ids_override(ids)
    a1 = a2 = None
    if static:
        a1 = (a.float().abs().amax() / q_max).reshape(1)
        a2 = torch.full((1,), 4.0 / q_max, device="cuda")
    out = layer(a, w1, w2, tw, ids, s1, s2, a1, a2, per_act_token=per_token, per_out_ch=per_ch, block_shape=block,
                out_dtype=out_dtype)
    assert out.dtype == (out_dtype or dtype) and out.shape == (m, k)
    ref = reference(a, w1, w2, tw, ids, s1, s2, a1, a2, per_act_token=per_token, block_shape=block)
    return out, ref, (a, w1f, w2f, tw, ids)
