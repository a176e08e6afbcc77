"""The INT8 hybrid blockwise ("Q/F") activation format: its parameters and shape rules, in one place.

For a row ``x [K]`` with block size ``B`` along K and super groups of ``S_eff`` consecutive K-blocks::

    amax[b] = max |x[k]| over block b                         (blocks b = 0 … K/B - 1)
    F[g]    = max_{b in g} amax[b] / (127 · q_max)              float32, one per (row, super group)
    Q[b]    = clamp(ceil(amax[b] / (127 · F[g])), 1, q_max)     int32,   one per (row, block)
    xq[k]   = clamp(round(x[k] / (Q[b] · F[g])), -127, 127)     int8

so that ``x ≈ xq · Q · F``. A super group whose F is 0 (all-zero, or so small that F underflows) has Q = 1 and
xq = 0: no NaN. ``round`` is round-half-away-from-zero (see :mod:`moejit.reference.int8`).

The hybrid GEMM accumulates ``I = Σ_{b in g} Q[b] · P[b]`` in int32 with ``|P[b]| ≤ B · 127²`` and
``Q ≤ q_max``, so a super group of S blocks cannot overflow only while ``S · B · 127² · q_max ≤ 2³¹ - 1``.

DECISION (overflow): a requested super group longer than that is *split*, not rejected. The effective super group
is ``S_eff = min(S, safe_super_group(B, q_max))`` and every super group (piece) of S_eff blocks gets its own F with
exactly the semantics above. With the defaults (B=128, S=256, q_max=16) the safe length is 65 blocks, so S_eff=65
and a K=2048 row (16 blocks) has a single F while K=14336 (112 blocks) has two (65 + 47 blocks). Every producer
(the Triton quantizers) and consumer (the hybrid GEMM, which is passed S_eff) agrees on S_eff, so the int32
accumulator can never overflow, whatever the caller asks for.

Shapes for ``x [T, K]``: ``xq int8 [T, K]``, ``Q int32 [T, K/B]``, ``F float32 [T, ceil((K/B) / S_eff)]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from moejit.errors import MoejitInputError

INT8_MAX = 127
INT32_MAX = 2**31 - 1

DEFAULT_BLOCK_SIZE = 128
DEFAULT_SUPER_GROUP_SIZE = 256
DEFAULT_Q_MAX = 16

MIN_BLOCK_SIZE = 16     # the int8 tensor-core MMA consumes K in steps of 16 (and 32 on SM80 m16n8k32)
MAX_BLOCK_SIZE = 4096   # keeps one block (plus its Q) inside one Triton tile


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_block_size(block_size) -> None:
    if not _is_int(block_size) or block_size < MIN_BLOCK_SIZE or block_size > MAX_BLOCK_SIZE \
            or block_size & (block_size - 1):
        raise MoejitInputError(f"block_size must be a power of two in [{MIN_BLOCK_SIZE}, {MAX_BLOCK_SIZE}], "
                               f"got {block_size!r}")


def max_q_max(block_size: int) -> int:
    """The largest q_max for which a super group of one block is overflow-safe: ``(2³¹-1) // (B · 127²)``."""
    _check_block_size(block_size)
    return INT32_MAX // (block_size * INT8_MAX * INT8_MAX)


def _check_q_max(block_size: int, q_max) -> None:
    top = max_q_max(block_size)
    if not _is_int(q_max) or q_max < 1 or q_max > top:
        raise MoejitInputError(f"q_max must be an int in [1, {top}] for block_size {block_size} "
                               f"(B · 127² · q_max must fit in int32), got {q_max!r}")


def safe_super_group(block_size: int, q_max: int) -> int:
    """The longest overflow-safe super group, in blocks: ``floor((2³¹ - 1) / (B · 127² · q_max))`` (≥ 1)."""
    _check_block_size(block_size)
    _check_q_max(block_size, q_max)
    return INT32_MAX // (block_size * INT8_MAX * INT8_MAX * q_max)


def effective_super_group(block_size: int, super_group_size: int, q_max: int) -> int:
    """``min(S, safe_super_group(B, q_max))``: a longer requested super group is split into safe pieces, each with
    its own F (see the module docstring). This is the super group size the hybrid GEMM must be given."""
    check_params(block_size, super_group_size, q_max)
    return min(super_group_size, safe_super_group(block_size, q_max))


def check_params(block_size, super_group_size, q_max) -> None:
    """Raise :class:`MoejitInputError` unless (B, S, q_max) describe a valid format."""
    _check_block_size(block_size)
    if not _is_int(super_group_size) or super_group_size < 1:
        raise MoejitInputError(f"super_group_size must be a positive int (K-blocks per F), got {super_group_size!r}")
    _check_q_max(block_size, q_max)


def num_blocks(k: int, block_size: int) -> int:
    """``K / B``; K must be a positive multiple of B."""
    _check_block_size(block_size)
    if not _is_int(k) or k <= 0 or k % block_size:
        raise MoejitInputError(f"the quantized dimension K = {k} must be a positive multiple of block_size "
                               f"{block_size}")
    return k // block_size


def num_super_groups(k: int, block_size: int, super_group_size: int, q_max: int) -> int:
    """``G = ceil((K/B) / S_eff)``: the number of F values per row."""
    s_eff = effective_super_group(block_size, super_group_size, q_max)
    return -(-num_blocks(k, block_size) // s_eff)


def scale_shapes(t: int, k: int, block_size: int, super_group_size: int, q_max: int):
    """``((T, K/B), (T, G))``: the shapes of Q (int32) and F (float32) for ``x [T, K]``."""
    return ((t, num_blocks(k, block_size)), (t, num_super_groups(k, block_size, super_group_size, q_max)))


@dataclass(frozen=True)
class HybridFormat:
    """(B, S, q_max) validated once; ``super_group_size`` is the *requested* S, :attr:`s_eff` the one used."""

    block_size: int = DEFAULT_BLOCK_SIZE
    super_group_size: int = DEFAULT_SUPER_GROUP_SIZE
    q_max: int = DEFAULT_Q_MAX

    def __post_init__(self):
        check_params(self.block_size, self.super_group_size, self.q_max)

    @property
    def s_eff(self) -> int:
        return effective_super_group(self.block_size, self.super_group_size, self.q_max)

    def num_blocks(self, k: int) -> int:
        return num_blocks(k, self.block_size)

    def num_groups(self, k: int) -> int:
        return num_super_groups(k, self.block_size, self.super_group_size, self.q_max)

    def scale_shapes(self, t: int, k: int):
        return scale_shapes(t, k, self.block_size, self.super_group_size, self.q_max)
