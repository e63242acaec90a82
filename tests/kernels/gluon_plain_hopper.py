"""Plain attention (no score_mod, no mask_mod) for Hopper, written in Gluon, Triton's lower-level dialect.

A fixture for the verifier's Gluon path, and the measured starting point that prompts/hopper.j2 describes.
Each program owns 128 query rows: a loader warpgroup streams K and V tiles through a ring of shared-memory
stages with the tensor-memory accelerator (mbarriers say when a stage is full and when both consumers are done
with it), and two consumer warpgroups of 64 rows each issue the next block's QK^T before rescaling the
accumulator and issuing this block's PV; the two consumers take turns on the tensor cores. Bf16, any lengths (the last key block masked),
GQA; head dims whose rows are a multiple of 16 bytes.
"""
import math

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma, \
    warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

LOG2E = 1.4426950408889634
BLOCK_M_HALF, BLOCK_N, STAGES = 64, 64, 3


@gluon.jit
def _loader(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty,
            bh_q, bh_kv, off_m, n_blocks):
    BMH: gl.constexpr = q_smem.shape[2]
    BN: gl.constexpr = k_smem.shape[2]
    STAGES: gl.constexpr = k_smem.shape[0]
    mbarrier.expect(q_bar, 2 * q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [bh_q, off_m, 0], q_bar, q_smem.index(0))
    tma.async_copy_global_to_shared(q_desc, [bh_q, off_m + BMH, 0], q_bar, q_smem.index(1))
    for j in range(n_blocks):
        s = j % STAGES
        ph = (j // STAGES) & 1
        mbarrier.wait(kv_empty.index(s), ph ^ 1)
        mbarrier.expect(k_ready.index(s), k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [bh_kv, j * BN, 0], k_ready.index(s), k_smem.index(s))
        mbarrier.expect(v_ready.index(s), v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [bh_kv, j * BN, 0], v_ready.index(s), v_smem.index(s))


@gluon.jit
def _softmax_step(s, m_i, l_i, qk_scale, kv_start, SKV, BN: gl.constexpr, s_layout: gl.constexpr,
                  EVEN: gl.constexpr):
    # Branch-free (a constexpr picks the variant): with a runtime branch here ptxas waited for the in-flight
    # wgmma at the join.
    if not EVEN:  # keys past the end score -inf
        kv_idx = kv_start + gl.arange(0, BN, layout=gl.SliceLayout(0, s_layout))
        s = gl.where((kv_idx < SKV)[None, :], s, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
    p = gl.exp2(s * qk_scale - m_new[:, None])
    alpha = gl.exp2(m_i - m_new)
    l_i = l_i * alpha + gl.sum(p, 1)
    return p, alpha, m_new, l_i


@gluon.jit
def _pv_then_next_softmax(j, q, k_smem, v_smem, k_ready, v_ready, kv_empty, p, alpha, m_i, l_i, acc, zero_s, SKV,
                          qk_scale, s_layout: gl.constexpr, p_layout: gl.constexpr, row_o: gl.constexpr,
                          EVEN: gl.constexpr):
    """Issue QK^T of block j+1, rescale and issue PV of block j, then block j+1's softmax (ptxas places the wait
    for PV ahead of most of it: the other consumer warpgroup is what fills the tensor cores meanwhile)."""
    BN: gl.constexpr = k_smem.shape[2]
    D: gl.constexpr = k_smem.shape[3]
    STAGES: gl.constexpr = k_smem.shape[0]
    st = j % STAGES
    nst = (j + 1) % STAGES
    mbarrier.wait(k_ready.index(nst), ((j + 1) // STAGES) & 1)
    s_tok = warpgroup_mma(q, k_smem.index(nst).reshape([BN, D]).permute((1, 0)), zero_s, use_acc=False,
                          is_async=True)
    acc = acc * alpha[:, None]
    mbarrier.wait(v_ready.index(st), (j // STAGES) & 1)
    acc_tok = warpgroup_mma(p, v_smem.index(st).reshape([BN, D]), acc, is_async=True)
    s = warpgroup_mma_wait(1, deps=(s_tok, ))
    p_next, alpha_next, m_i, l_i = _softmax_step(s, m_i, l_i, qk_scale, (j + 1) * BN, SKV, BN, s_layout, EVEN)
    p_next = gl.convert_layout(p_next.to(gl.bfloat16), p_layout)
    alpha_next = gl.convert_layout(alpha_next, row_o)
    # the softmax results pass through the wait: without that, the compiled code keeps no wgmma in flight at all
    acc, p_next, alpha_next, m_i, l_i = warpgroup_mma_wait(0, deps=(acc_tok, p_next, alpha_next, m_i, l_i))
    mbarrier.arrive(kv_empty.index(st), count=1)
    return p_next, alpha_next, m_i, l_i, acc


@gluon.jit
def _consumer(q_tile, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, o_desc,
              bh_q, row0, n_blocks, SKV, qk_scale, EVEN: gl.constexpr):
    BMH: gl.constexpr = q_tile.shape[1]
    D: gl.constexpr = q_tile.shape[2]
    BN: gl.constexpr = k_smem.shape[2]
    STAGES: gl.constexpr = k_smem.shape[0]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BN, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    q = q_tile.reshape([BMH, D])
    zero_s = gl.zeros([BMH, BN], gl.float32, layout=s_layout)
    acc = gl.zeros([BMH, D], gl.float32, layout=o_layout)
    m_i = gl.full([BMH], float("-inf"), gl.float32, layout=row_s)
    l_i = gl.full([BMH], 0.0, gl.float32, layout=row_s)

    mbarrier.wait(q_bar, 0)
    mbarrier.wait(k_ready.index(0), 0)
    s_tok = warpgroup_mma(q, k_smem.index(0).reshape([BN, D]).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    s = warpgroup_mma_wait(0, deps=(s_tok, ))
    p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, qk_scale, 0, SKV, BN, s_layout, EVEN)
    p_a = gl.convert_layout(p.to(gl.bfloat16), p_layout)
    alpha_a = gl.convert_layout(alpha, row_o)
    # Two blocks a trip, so that the P being multiplied and the P being computed live in different registers
    # (with one loop-carried P the compiler must wait for PV before it may overwrite P, losing the overlap).
    for i in range((n_blocks - 1) // 2):
        p_b, alpha_b, m_i, l_i, acc = _pv_then_next_softmax(2 * i, q, k_smem, v_smem, k_ready, v_ready, kv_empty,
                                                            p_a, alpha_a, m_i, l_i, acc, zero_s, SKV, qk_scale,
                                                            s_layout, p_layout, row_o, EVEN)
        p_a, alpha_a, m_i, l_i, acc = _pv_then_next_softmax(2 * i + 1, q, k_smem, v_smem, k_ready, v_ready,
                                                            kv_empty, p_b, alpha_b, m_i, l_i, acc, zero_s, SKV,
                                                            qk_scale, s_layout, p_layout, row_o, EVEN)
    if (n_blocks - 1) % 2 == 1:
        p_a, alpha_a, m_i, l_i, acc = _pv_then_next_softmax(n_blocks - 2, q, k_smem, v_smem, k_ready, v_ready,
                                                            kv_empty, p_a, alpha_a, m_i, l_i, acc, zero_s, SKV,
                                                            qk_scale, s_layout, p_layout, row_o, EVEN)
    last = n_blocks - 1
    st = last % STAGES
    acc = acc * alpha_a[:, None]
    mbarrier.wait(v_ready.index(st), (last // STAGES) & 1)
    acc_tok = warpgroup_mma(p_a, v_smem.index(st).reshape([BN, D]), acc, is_async=True)
    acc = warpgroup_mma_wait(0, deps=(acc_tok, ))
    mbarrier.arrive(kv_empty.index(st), count=1)

    inv = 1.0 / gl.convert_layout(l_i, row_o)
    out = (acc * inv[:, None]).to(gl.bfloat16)
    q.store(out)  # Q's tile is free now: it becomes the output's staging tile
    fence_async_shared()
    tma.async_copy_shared_to_global(o_desc, [bh_q, row0, 0], q_tile)
    tma.store_wait(0)


@gluon.jit
def _consumer_even(q_tile, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, o_desc, bh_q, row0, n_blocks, SKV,
                   qk_scale):
    _consumer(q_tile, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, o_desc, bh_q, row0, n_blocks, SKV,
              qk_scale, True)


@gluon.jit
def _consumer_ragged(q_tile, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, o_desc, bh_q, row0, n_blocks, SKV,
                     qk_scale):
    _consumer(q_tile, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, o_desc, bh_q, row0, n_blocks, SKV,
              qk_scale, False)


@gluon.jit
def _fwd(q_desc, k_desc, v_desc, o_desc, H, GROUP, SKV, qk_scale,
         BMH: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr, EVEN_KV: gl.constexpr,
         REGS: gl.constexpr = 240):
    pid_m = gl.program_id(0)
    bh_q = gl.program_id(1)
    bh_kv = (bh_q // H) * (H // GROUP) + (bh_q % H) // GROUP
    off_m = pid_m * (2 * BMH)
    n_blocks = (SKV + BN - 1) // BN
    q_smem = gl.allocate_shared_memory(gl.bfloat16, [2, 1, BMH, D], q_desc.layout)
    k_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, 1, BN, D], k_desc.layout)
    v_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, 1, BN, D], v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    kv_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(kv_empty.index(i), count=2)
    rest = (k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, o_desc, bh_q)
    tail = (n_blocks, SKV, qk_scale)
    loader_args = (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, bh_q, bh_kv,
                   off_m, n_blocks)
    # the loader is the default partition, so that both consumer warpgroups get their register budget
    if EVEN_KV:
        gl.warp_specialize([(_loader, loader_args),
                            (_consumer_even, (q_smem.index(0), ) + rest + (off_m, ) + tail),
                            (_consumer_even, (q_smem.index(1), ) + rest + (off_m + BMH, ) + tail)],
                           [4, 4], [REGS, REGS])
    else:
        gl.warp_specialize([(_loader, loader_args),
                            (_consumer_ragged, (q_smem.index(0), ) + rest + (off_m, ) + tail),
                            (_consumer_ragged, (q_smem.index(1), ) + rest + (off_m + BMH, ) + tail)],
                           [4, 4], [REGS, REGS])


def _descriptor(t, rows, block_rows):
    """A [batch*heads, length, head_dim] view of t with [1, block_rows, head_dim] tiles (zero fill past length)."""
    d = t.shape[-1]
    layout = gl.NVMMASharedLayout.get_default_for([1, block_rows, d], gl.bfloat16)
    return TensorDescriptor.from_tensor(t.reshape(rows, t.shape[2], d), [1, block_rows, d], layout)


def attention(q, k, v, *, scale=None, **buffers):
    b, h, sq, d = q.shape
    hkv, skv = k.shape[1], k.shape[2]
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    o = torch.empty_like(q)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    grid = ((sq + 2 * BLOCK_M_HALF - 1) // (2 * BLOCK_M_HALF), b * h)
    _fwd[grid](_descriptor(q, b * h, BLOCK_M_HALF), _descriptor(k, b * hkv, BLOCK_N), _descriptor(v, b * hkv, BLOCK_N),
               _descriptor(o, b * h, BLOCK_M_HALF), h, h // hkv, skv, scale * LOG2E,
               BMH=BLOCK_M_HALF, BN=BLOCK_N, D=d, STAGES=STAGES, EVEN_KV=skv % BLOCK_N == 0, num_warps=4)
    return o
