"""ONNX Runtime contrib ops (domain com.microsoft, plus the two ORT registers in the onnx domain) that ORT's
transformer optimizer emits for BERT / GPT-2 / LLaMA-like models.

Semantics follow ORT's CPU kernels. In particular the com.microsoft attention ops mask by *adding*
`mask_filter_value` (default -10000), not -inf: a fully masked row therefore softmaxes to a uniform
distribution, as in ORT, instead of zeros.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..registry import OpContext, register
from .math import gemm
from .nn import conv, layer_norm_stats, rotate

MS = "com.microsoft"
_EW = {"elementwise"}
_SQRT_2_OVER_PI = 0.7978845608028654


# --------------------------------------------------------------------------------------------- matmul, gelu


def _trans_batch(t: torch.Tensor, trans_batch: int, trans: int) -> torch.Tensor:
    """FusedMatMul's operand layout: transBatch moves dim 0 behind the batch dims
    ([d0, d1..dk, m, n] -> [d1..dk, d0, n]); trans then swaps the last two dims."""
    if t.dim() == 1:
        return t
    if trans_batch and t.dim() > 2:
        r = t.dim()
        t = t.permute(*range(1, r - 1), 0, r - 1)
    return t.transpose(-1, -2) if trans else t


@register("FusedMatMul", domain=MS, quantizable_inputs=(0, 1))
def fused_matmul(ctx: OpContext, a: torch.Tensor, b: torch.Tensor, alpha: float = 1.0, transA: int = 0,  # noqa: N803
                 transB: int = 0, transBatchA: int = 0, transBatchB: int = 0) -> torch.Tensor:  # noqa: N803
    y = torch.matmul(_trans_batch(a, transBatchA, transA), _trans_batch(b, transBatchB, transB))
    return y * alpha if alpha != 1.0 else y


@register("TransposeMatMul", domain=MS, quantizable_inputs=(0, 1))
def transpose_matmul(ctx: OpContext, a: torch.Tensor, b: torch.Tensor, alpha: float = 1.0, transA: int = 0,  # noqa: N803
                     transB: int = 0) -> torch.Tensor:  # noqa: N803
    return fused_matmul(ctx, a, b, alpha=alpha, transA=transA, transB=transB)


@register("Gelu", domain=MS, traits=_EW)
def ms_gelu(ctx: OpContext, x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x)


@register("BiasGelu", domain=MS, traits=_EW)
def bias_gelu(ctx: OpContext, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.gelu(x + bias)


@register("FastGelu", domain=MS, traits=_EW)
def fast_gelu(ctx: OpContext, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    if bias is not None:
        x = x + bias
    return 0.5 * x * (1.0 + torch.tanh(_SQRT_2_OVER_PI * x + (_SQRT_2_OVER_PI * 0.044715) * x * x * x))


@register("QuickGelu", domain=MS, traits=_EW)
def quick_gelu(ctx: OpContext, x: torch.Tensor, alpha: float = 1.702) -> torch.Tensor:
    return x * torch.sigmoid(alpha * x)


@register("BiasAdd", domain=MS, traits=_EW)
def bias_add(ctx: OpContext, x: torch.Tensor, bias: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    return x + bias + skip


@register("BiasSoftmax", domain=MS)
def bias_softmax(ctx: OpContext, data: torch.Tensor, bias: torch.Tensor, axis: int = 1,
                 is_inner_broadcast: int | None = None) -> torch.Tensor:
    """softmax(data + bias) over dims axis.. (flattened, as the kernel does). The bias broadcasts over the
    leading (outer) or the middle (inner) batch dims; numpy broadcasting covers both when the bias keeps
    its singleton dims, which is the only form ORT's fusion produces."""
    if is_inner_broadcast is None:
        raise ctx.fail("attribute 'is_inner_broadcast' is required")
    s = data + bias
    axis = axis % s.dim()
    flat = s.reshape(*s.shape[:axis], -1)
    return torch.softmax(flat, dim=-1).reshape(s.shape)


@register("GemmFastGelu", domain=MS, quantizable_inputs=(0, 1))
def gemm_fast_gelu(ctx: OpContext, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None
                   ) -> torch.Tensor:
    return fast_gelu(ctx, torch.matmul(x, w), bias)


@register("BiasSplitGelu", domain=MS)
def bias_split_gelu(ctx: OpContext, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(x + bias) split in halves along the last dim: left * gelu(right)."""
    left, right = (x + bias).chunk(2, dim=-1)
    return left * F.gelu(right)


def _fused_activation(ctx: OpContext, y: torch.Tensor, name: str, params: list[float]) -> torch.Tensor:
    """The activations ORT fuses into Conv/Gemm (FusedConv's activation_params, FusedGemm's
    activation_alpha/beta)."""
    if name in ("", "Identity"):
        return y
    if name == "Relu":
        return torch.relu(y)
    if name == "Tanh":
        return torch.tanh(y)
    if name == "Sigmoid":
        return torch.sigmoid(y)
    if name == "LeakyRelu":
        return F.leaky_relu(y, params[0] if params else 0.01)
    if name == "Clip":
        lo, hi = (params + [float("-inf"), float("inf")][len(params):])[:2]
        return torch.clamp(y, lo, hi)
    if name == "HardSigmoid":
        alpha, beta = (params + [0.2, 0.5][len(params):])[:2]
        return torch.clamp(y * alpha + beta, 0.0, 1.0)
    raise ctx.fail(f"fused activation {name!r} is not supported")


@register("FusedConv", domain=MS, quantizable_inputs=(0, 1))
def fused_conv(ctx: OpContext, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None,
               z: torch.Tensor | None = None, activation: str = "", activation_params: list[float] | None = None,
               **conv_attrs) -> torch.Tensor:
    """Conv (+ Z, the fused residual Add) followed by an activation: what ORT saves after its
    Conv+Activation fusion."""
    y = conv(ctx, x, w, b, **conv_attrs)
    if z is not None:
        y = y + z
    return _fused_activation(ctx, y, activation, list(activation_params or []))


@register("FusedGemm", domain=MS, quantizable_inputs=(0, 1))
def fused_gemm(ctx: OpContext, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None,
               activation: str = "", activation_alpha: float | None = None, activation_beta: float | None = None,
               activation_gamma: float | None = None, **gemm_attrs) -> torch.Tensor:
    y = gemm(ctx, a, b, c, **gemm_attrs)
    params = [p for p in (activation_alpha, activation_beta) if p is not None]
    return _fused_activation(ctx, y, activation, params)


# --------------------------------------------------------------------------------------------- layer norms


def _stats_shape(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return t.reshape(*x.shape[:-1], 1)


@register("SkipLayerNormalization", domain=MS)
def skip_layer_norm(ctx: OpContext, x: torch.Tensor, skip: torch.Tensor, gamma: torch.Tensor,
                    beta: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                    epsilon: float = 1e-12) -> tuple[torch.Tensor, ...]:
    """LayerNorm(x + skip + bias) * gamma + beta over the last dim; outputs (y, mean, inv_std, sum)."""
    s = x + skip
    if bias is not None:
        s = s + bias
    normed, mean, inv = layer_norm_stats(s, -1, epsilon, torch.float32)
    y = normed.to(x.dtype) * gamma
    if beta is not None:
        y = y + beta
    return y, _stats_shape(x, mean), _stats_shape(x, inv), s


@register("SkipSimplifiedLayerNormalization", domain=MS)
def skip_simplified_layer_norm(ctx: OpContext, x: torch.Tensor, skip: torch.Tensor, gamma: torch.Tensor,
                               bias: torch.Tensor | None = None, epsilon: float = 1e-12
                               ) -> tuple[torch.Tensor, ...]:
    """RMSNorm(x + skip + bias) * gamma; outputs (y, mean (unused, zeros), inv_std, sum)."""
    s = x + skip
    if bias is not None:
        s = s + bias
    normed, _, inv = layer_norm_stats(s, -1, epsilon, torch.float32, rms=True)
    return normed.to(x.dtype) * gamma, torch.zeros_like(_stats_shape(x, inv)), _stats_shape(x, inv), s


@register("SimplifiedLayerNormalization", since=1)
def simplified_layer_norm(ctx: OpContext, x: torch.Tensor, scale: torch.Tensor, axis: int = -1,
                          epsilon: float = 1e-5, stash_type: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """ORT's RMSNorm in the onnx domain: x / sqrt(mean(x^2) + eps) * scale; outputs (y, inv_std_var)."""
    stash = torch.float32 if stash_type == 1 else x.dtype
    normed, _, inv = layer_norm_stats(x, axis, epsilon, stash, rms=True)
    return normed.to(x.dtype) * scale, inv


@register("EmbedLayerNormalization", domain=MS)
def embed_layer_norm(
    ctx: OpContext,
    input_ids: torch.Tensor,
    segment_ids: torch.Tensor | None,
    word_embedding: torch.Tensor,
    position_embedding: torch.Tensor,
    segment_embedding: torch.Tensor | None = None,
    gamma: torch.Tensor | None = None,
    beta: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    epsilon: float = 1e-12,
    mask_index_type: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BERT's embedding block: word + position (+ segment) embeddings, LayerNorm; mask_index = number of
    ones per row of the mask (zeros when there is no mask); embedding_sum = the sum before LayerNorm."""
    if gamma is None or beta is None:
        raise ctx.fail("gamma and beta are required")
    b, s = input_ids.shape
    if position_ids is None:
        pos = torch.arange(s, device=input_ids.device).expand(b, s)
    else:
        pos = position_ids.long().expand(b, s)
    emb = word_embedding[input_ids.long()] + position_embedding[pos]
    if segment_embedding is not None:
        if segment_ids is None:
            raise ctx.fail("segment_embedding is given without segment_ids")
        emb = emb + segment_embedding[segment_ids.long()]
    normed, _, _ = layer_norm_stats(emb, -1, epsilon, torch.float32)
    y = normed.to(emb.dtype) * gamma + beta
    if mask is not None:
        mask_index = (mask != 0).sum(dim=1).to(torch.int32)
    else:
        mask_index = torch.zeros(b, dtype=torch.int32, device=input_ids.device)
    return y, mask_index, emb


# --------------------------------------------------------------------------------------------- rotary


@register("RotaryEmbedding", domain=MS)
def ms_rotary_embedding(
    ctx: OpContext,
    x: torch.Tensor,
    position_ids: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
    interleaved: int = 0,
    is_packed_batching: int = 0,
    num_heads: int = 0,
    rotary_embedding_dim: int = 0,
    scale: float = 1.0,
) -> torch.Tensor:
    """ORT RotaryEmbedding: x is (B, S, N*H) or (B, N, S, H); position_ids is (B, S) or a 1-element start
    offset; caches are (max_pos, rotary_dim/2)."""
    if is_packed_batching:
        raise ctx.fail("is_packed_batching=1 is not supported")
    if scale != 1.0:
        raise ctx.fail("scale != 1 is not supported")
    if x.dim() == 4:
        xs = x.transpose(1, 2)  # (B, S, N, H)
    elif x.dim() == 3:
        heads = num_heads or (x.shape[-1] // (2 * cos_cache.shape[-1]))
        xs = x.reshape(x.shape[0], x.shape[1], heads, -1)
    else:
        raise ctx.fail(f"input must be 3-D or 4-D, got rank {x.dim()}")
    b, s = xs.shape[0], xs.shape[1]
    d = rotary_embedding_dim or 2 * cos_cache.shape[-1]
    if position_ids.numel() == 1:
        pos = position_ids.reshape(1, 1).long() + torch.arange(s, device=x.device).reshape(1, s)
        pos = pos.expand(b, s)
    else:
        pos = position_ids.long()
    cos, sin = cos_cache[pos][..., : d // 2].unsqueeze(2), sin_cache[pos][..., : d // 2].unsqueeze(2)
    y = torch.cat([rotate(xs[..., :d], cos, sin, bool(interleaved)), xs[..., d:]], dim=-1)
    return y.transpose(1, 2) if x.dim() == 4 else y.reshape(x.shape)


# --------------------------------------------------------------------------------------------- attention


def _heads(t: torch.Tensor, n: int) -> torch.Tensor:
    """(B, S, n*H) -> (B, n, S, H)."""
    return t.reshape(t.shape[0], t.shape[1], n, -1).transpose(1, 2)


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    """(B, n, S, H) -> (B, S, n*H)."""
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1)


def _key_keep(ctx: OpContext, mask: torch.Tensor, b: int, s: int, total: int) -> torch.Tensor:
    """ORT's mask_index / key_padding_mask forms as a boolean "may attend" of shape (B, 1, S or 1, T)."""
    t = torch.arange(total, device=mask.device).reshape(1, total)
    if mask.dim() == 1 and mask.shape[0] == b:  # right padding: valid key lengths
        return (t < mask.reshape(b, 1).long()).reshape(b, 1, 1, total)
    if mask.dim() == 1 and mask.shape[0] == 2 * b:  # left padding: end positions, then start positions
        end, start = mask[:b].reshape(b, 1).long(), mask[b:].reshape(b, 1).long()
        return ((t < end) & (t >= start)).reshape(b, 1, 1, total)
    if mask.dim() == 2:  # (B, T) raw 0/1 mask
        return (mask > 0).reshape(b, 1, 1, total)
    if mask.dim() == 3:  # (B, S, T)
        return (mask > 0).reshape(b, 1, s, total)
    raise ctx.fail(f"mask of shape {tuple(mask.shape)} is not supported (use (B), (2B), (B,T) or (B,S,T))")


def _mask_bias(ctx: OpContext, mask: torch.Tensor | None, causal: bool, b: int, s: int, total: int,
               filter_value: float, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive bias: `filter_value` where the padding mask forbids a key, the lowest finite float where
    the causal rule does (query i, at absolute position total - s + i, sees keys j <= total - s + i), else
    0. That is ORT's CPU kernel: a row with no allowed key then attends to its padded-but-not-future keys
    (uniformly, up to the scores), never to future ones."""
    bias = None
    if mask is not None:
        keep = _key_keep(ctx, mask, b, s, total)
        bias = torch.where(keep, torch.zeros((), dtype=dtype), torch.full((), filter_value, dtype=dtype))
    if causal:
        i = torch.arange(s).reshape(s, 1)
        j = torch.arange(total).reshape(1, total)
        future = j > i + (total - s)
        lowest = torch.full((), torch.finfo(dtype).min, dtype=dtype)
        bias = torch.where(future, lowest, torch.zeros((), dtype=dtype) if bias is None else bias)
    return bias


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, bias: torch.Tensor | None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scale + bias) v with finite masks (ORT's CPU attention kernels); also returns the
    softmax input (scaled scores plus bias and mask), which is ORT's `qk` output."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    s = scores if bias is None else scores + bias
    return torch.matmul(torch.softmax(s, dim=-1), v), s


@register("Attention", domain=MS)
def ms_attention(
    ctx: OpContext,
    x: torch.Tensor,
    weights: torch.Tensor,
    bias: torch.Tensor | None = None,
    mask_index: torch.Tensor | None = None,
    past: torch.Tensor | None = None,
    attention_bias: torch.Tensor | None = None,
    past_sequence_length: torch.Tensor | None = None,
    do_rotary: int = 0,
    mask_filter_value: float = -10000.0,
    num_heads: int | None = None,
    past_present_share_buffer: int = 0,
    qkv_hidden_sizes: list[int] | None = None,
    rotary_embedding_dim: int = 0,
    scale: float = 0.0,
    unidirectional: int = 0,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """BERT/GPT-2 attention with packed QKV weights: (B, S, In) x (In, Dq+Dk+Dv) -> (B, S, Dv), present."""
    if num_heads is None:
        raise ctx.fail("attribute 'num_heads' is required")
    if do_rotary or past_present_share_buffer:
        raise ctx.fail("do_rotary and past_present_share_buffer are not supported")
    if past_sequence_length is not None:
        raise ctx.fail("the past_sequence_length input (buffer sharing) is not supported")
    dq, dk, dv = qkv_hidden_sizes if qkv_hidden_sizes else [weights.shape[1] // 3] * 3
    qkv = torch.matmul(x, weights)
    if bias is not None:
        qkv = qkv + bias
    q, k, v = _heads(qkv[..., :dq], num_heads), _heads(qkv[..., dq:dq + dk], num_heads), \
        _heads(qkv[..., dq + dk:dq + dk + dv], num_heads)
    if past is not None:
        k = torch.cat([past[0], k], dim=2)
        v = torch.cat([past[1], v], dim=2)
    b, s, total = x.shape[0], x.shape[1], k.shape[2]
    sc = scale if scale else 1.0 / math.sqrt(dq // num_heads)
    mbias = _mask_bias(ctx, mask_index, bool(unidirectional) and s > 1, b, s, total, mask_filter_value, x.dtype)
    if attention_bias is not None:
        mbias = attention_bias if mbias is None else mbias + attention_bias
    y, _ = _sdpa(q, k, v, sc, mbias)
    if k.shape != v.shape:  # present packs K and V in one tensor: only possible with equal head sizes
        if len(ctx.node.outputs) > 1 and ctx.node.outputs[1] is not None:
            raise ctx.fail("the present output needs equal Q/K and V hidden sizes")
        return _merge_heads(y)
    return _merge_heads(y), torch.stack([k, v])


@register("MultiHeadAttention", domain=MS)
def multi_head_attention(
    ctx: OpContext,
    query: torch.Tensor,
    key: torch.Tensor | None = None,
    value: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
    attention_bias: torch.Tensor | None = None,
    past_key: torch.Tensor | None = None,
    past_value: torch.Tensor | None = None,
    past_sequence_length: torch.Tensor | None = None,
    cache_indirection: torch.Tensor | None = None,
    mask_filter_value: float = -10000.0,
    num_heads: int | None = None,
    scale: float = 0.0,
    unidirectional: int = 0,
) -> tuple[torch.Tensor, ...]:
    """Separate (or packed) Q/K/V, optional input-projection bias, key padding mask, additive attention
    bias and a BNSH KV cache. Outputs (y, present_key, present_value, qk)."""
    if num_heads is None:
        raise ctx.fail("attribute 'num_heads' is required")
    if past_sequence_length is not None or cache_indirection is not None:
        raise ctx.fail("buffer sharing (past_sequence_length, cache_indirection) is not supported")
    n = num_heads
    if query.dim() == 5:  # packed QKV: (B, S, N, 3, H)
        if key is not None or value is not None:
            raise ctx.fail("packed QKV query takes no key/value inputs")
        q, k, v = (query[:, :, :, i].transpose(1, 2) for i in range(3))
        kv_bnsh = False
    else:
        if key is None:
            raise ctx.fail("key is required unless query is packed QKV")
        q = query
        if key.dim() == 5:  # packed KV: (B, L, N, 2, H)
            k, v = key[:, :, :, 0].transpose(1, 2), key[:, :, :, 1].transpose(1, 2)
            kv_bnsh = True
        elif key.dim() == 4:  # already BNSH (cross-attention cache): no bias
            if value is None:
                raise ctx.fail("value is required with a 4-D key")
            k, v, kv_bnsh = key, value, True
        else:
            if value is None:
                raise ctx.fail("value is required with a 3-D key")
            k, v, kv_bnsh = key, value, False
    if q.dim() == 3:
        dqk = q.shape[-1]
        if bias is not None:
            q = q + bias[:dqk]
        q = _heads(q, n)
    elif bias is not None:
        q = q + bias[:q.shape[1] * q.shape[-1]].reshape(1, n, 1, -1)
    if not kv_bnsh:
        if bias is not None:
            dk = k.shape[-1] if k.dim() == 3 else n * k.shape[-1]
            bk, bv = bias[q.shape[1] * q.shape[-1]:][:dk], bias[q.shape[1] * q.shape[-1] + dk:]
            k = k + (bk if k.dim() == 3 else bk.reshape(1, n, 1, -1))
            v = v + (bv if v.dim() == 3 else bv.reshape(1, n, 1, -1))
        if k.dim() == 3:
            k, v = _heads(k, n), _heads(v, n)
    if past_key is not None and past_value is not None:
        k = torch.cat([past_key, k], dim=2)
        v = torch.cat([past_value, v], dim=2)
    b, s, total = q.shape[0], q.shape[2], k.shape[2]
    sc = scale if scale else 1.0 / math.sqrt(q.shape[-1])
    mbias = _mask_bias(ctx, key_padding_mask, bool(unidirectional), b, s, total, mask_filter_value, q.dtype)
    if attention_bias is not None:
        mbias = attention_bias if mbias is None else mbias + attention_bias
    y, qk = _sdpa(q, k, v, sc, mbias)
    return _merge_heads(y), k, v, qk


@register("GroupQueryAttention", domain=MS)
def group_query_attention(
    ctx: OpContext,
    query: torch.Tensor,
    key: torch.Tensor | None = None,
    value: torch.Tensor | None = None,
    past_key: torch.Tensor | None = None,
    past_value: torch.Tensor | None = None,
    seqlens_k: torch.Tensor | None = None,
    total_sequence_length: torch.Tensor | None = None,
    cos_cache: torch.Tensor | None = None,
    sin_cache: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    attention_bias: torch.Tensor | None = None,
    head_sink: torch.Tensor | None = None,
    *rest: torch.Tensor | None,
    causal: int = 1,
    do_rotary: int = 0,
    k_quant_type: str = "NONE",
    v_quant_type: str = "NONE",
    kv_cache_bit_width: int = 0,
    kv_num_heads: int | None = None,
    local_window_size: int = -1,
    num_heads: int | None = None,
    qk_norm_epsilon: float = 1e-6,
    q_norm_epsilon: float = 0.0,
    k_norm_epsilon: float = 0.0,
    qk_output: int = 0,
    rotary_interleaved: int = 0,
    scale: float = 0.0,
    sliding_window_cache: int = 0,
    smooth_softmax: int = -1,
    softcap: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GQA, prompt phase only: an empty past, every sequence starting at position 0, right padding given
    by seqlens_k (total lengths - 1). Decoding with a cache, quantized caches, sliding windows, head sinks,
    smooth softmax and QK norms fail clearly."""
    if num_heads is None or kv_num_heads is None:
        raise ctx.fail("attributes 'num_heads' and 'kv_num_heads' are required")
    if any(t is not None for t in rest) or head_sink is not None:
        raise ctx.fail("head_sink, KV scales, QK norm weights and query_seqlens are not supported")
    if k_quant_type != "NONE" or v_quant_type != "NONE" or kv_cache_bit_width:
        raise ctx.fail("quantized KV caches are not supported")
    if sliding_window_cache or local_window_size != -1 or smooth_softmax == 1 or softcap:
        raise ctx.fail("local windows, smooth softmax and softcap are not supported")
    if not causal:
        raise ctx.fail("causal=0 is not supported")
    if seqlens_k is None:
        raise ctx.fail("seqlens_k is required")
    if past_key is not None and past_key.shape[2] > 0:
        # A non-empty past means token generation (or a chunk after the prompt): positions depend on
        # seqlens_k per batch entry, which needs ORT's buffer layout.
        raise ctx.fail("only the prompt phase (empty past_key) is supported")
    n, kvn = num_heads, kv_num_heads
    if key is None:  # packed QKV (B, S, (n + 2 kvn) * H)
        h = query.shape[-1] // (n + 2 * kvn)
        q3, k3, v3 = query[..., :n * h], query[..., n * h:(n + kvn) * h], query[..., (n + kvn) * h:]
    else:
        if value is None:
            raise ctx.fail("value is required with key")
        q3, k3, v3 = query, key, value
    q, k, v = _heads(q3, n), _heads(k3, kvn), _heads(v3, kvn)
    b, s, hd = q.shape[0], q.shape[2], q.shape[3]
    if do_rotary:
        if cos_cache is None or sin_cache is None:
            raise ctx.fail("do_rotary needs cos_cache and sin_cache")
        pos = position_ids.long() if position_ids is not None else \
            torch.arange(s, device=q.device).expand(b, s)
        d = 2 * cos_cache.shape[-1]
        cos, sin = cos_cache[pos].unsqueeze(1), sin_cache[pos].unsqueeze(1)  # (B, 1, S, d/2)
        q = torch.cat([rotate(q[..., :d], cos, sin, bool(rotary_interleaved)), q[..., d:]], dim=-1)
        k = torch.cat([rotate(k[..., :d], cos, sin, bool(rotary_interleaved)), k[..., d:]], dim=-1)
    present_k, present_v = k, v
    kk, vv = k.repeat_interleave(n // kvn, dim=1), v.repeat_interleave(n // kvn, dim=1)
    sc = scale if scale else 1.0 / math.sqrt(hd)
    scores = torch.matmul(q, kk.transpose(-1, -2)) * sc
    if attention_bias is not None:
        scores = scores + attention_bias
    i = torch.arange(s, device=q.device).reshape(1, 1, s, 1)
    j = torch.arange(s, device=q.device).reshape(1, 1, 1, s)
    valid = seqlens_k.reshape(b, 1, 1, 1).long() + 1
    allowed = (j <= i) & (j < valid)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    # Rows past a sequence's length (right padding) see no valid key of their own; ORT leaves them
    # unspecified, here they stay finite (causal keeps key 0 allowed).
    y = torch.matmul(probs, vv)
    return _merge_heads(y), present_k, present_v
