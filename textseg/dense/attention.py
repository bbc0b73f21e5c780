"""The last block of a CLIP ViT as the training-free dense methods compute it, and their input conventions.

* ``sclip`` (SCLIP): correlative self-attention, softmax(q qᵀ) + softmax(k kᵀ) on the values; residual and MLP kept.
* ``naclip`` (NACLIP): the reduced block: its attention alone (no residual, no MLP), softmax(k kᵀ + ω) with ω a
  Gaussian of the patch distance (zero on the class token's row and column).
* ``proxyclip`` (ProxyCLIP): the values (resized to the proxy's grid) aggregated with an attention computed from a
  proxy's patch features: softmax((S − β·mean S)·γ) over the cosine similarities S, entries below 0 dropped; no
  residual, no MLP, no class token.

All take and return batch-first tensors, so every window of every image goes through in one call.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from textseg.config import DENSE_MODES

# The methods' input normalisation: mmseg's SegDataPreProcessor with CLIP's statistics in 0-255 units.
PIXEL_MEAN_255 = (122.771, 116.746, 104.094)
PIXEL_STD_255 = (68.501, 66.632, 70.323)


def dino_pos_embed(pos: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """A (1 + N, D) position embedding (class position first, N a square grid) for a gh × gw patch grid, resampled
    as DINO and the dense methods do it: bicubic with the scale factor ``(g + 0.1) / sqrt(N)`` per axis (the
    factor, not the output size, sets the sampling positions). The trained grid is returned as it is."""
    n = pos.shape[0] - 1
    side = int(math.sqrt(n))
    if gh == gw == side:
        return pos
    grid = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((gh + 0.1) / side, (gw + 0.1) / side), mode="bicubic",
                         align_corners=False, recompute_scale_factor=False)
    if tuple(grid.shape[-2:]) != (gh, gw):
        raise ValueError(f"position embedding resampled to {tuple(grid.shape[-2:])}, expected {(gh, gw)}")
    return torch.cat([pos[:1], grid[0].permute(1, 2, 0).reshape(gh * gw, -1)], 0)


def neighbourhood_bias(gh: int, gw: int, std: float, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """NACLIP's (1 + N, 1 + N) attention bias ω for a gh × gw grid: exp(−d² / (2 std²)) between patches at
    distance d, 0 in the class token's row and column."""
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64),
                            indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    d2 = (ys[:, None] - ys[None, :]) ** 2 + (xs[:, None] - xs[None, :]) ** 2
    bias = torch.zeros(gh * gw + 1, gh * gw + 1, dtype=torch.float64)
    bias[1:, 1:] = torch.exp(-d2 / (2 * std * std))
    return bias.to(device=device, dtype=dtype)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, D) → (B, heads, L, D / heads)."""
    b, length, dim = x.shape
    return x.view(b, length, heads, dim // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, L, d) → (B, L, heads · d)."""
    b, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(b, length, heads * dim)


def correlative_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SCLIP's (softmax(q qᵀ s) + softmax(k kᵀ s)) v for (B, heads, L, d) tensors, s = d^-½."""
    return F.scaled_dot_product_attention(q, q, v) + F.scaled_dot_product_attention(k, k, v)


def proxy_attention(features: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """ProxyCLIP's (B, M, M) attention from (B, M, C) proxy features: cosine similarities S, then
    softmax((S − β · mean(S)) · γ) with the entries where that is below 0 left out; the mean is per image."""
    f = F.normalize(features, dim=-1)
    sim = f @ f.transpose(1, 2)
    sim = (sim - sim.mean(dim=(1, 2), keepdim=True) * beta) * gamma
    return sim.masked_fill(sim < 0, float("-inf")).softmax(-1)


def _projections(block: nn.Module, x: torch.Tensor, which: str) -> list[torch.Tensor]:
    """The attention's input projections of ``ln_1(x)`` named in ``which`` (a subset of "qkv", in that order): only
    those are computed."""
    attn = block.attn
    dim = attn.embed_dim
    rows = [slice(i * dim, (i + 1) * dim) for i, name in enumerate("qkv") if name in which]
    weight = torch.cat([attn.in_proj_weight[r] for r in rows]) if len(rows) < 3 else attn.in_proj_weight
    bias = attn.in_proj_bias
    if bias is not None and len(rows) < 3:
        bias = torch.cat([bias[r] for r in rows])
    return list(F.linear(block.ln_1(x), weight, bias).chunk(len(rows), dim=-1))


def last_block(block: nn.Module, x: torch.Tensor, mode: str, grid: tuple[int, int], *, gaussian_std: float = 5.0,
               proxy: torch.Tensor | None = None, beta: float = 1.2, gamma: float = 3.0) -> torch.Tensor:
    """The last residual block of an open_clip ViT on (B, 1 + N, D) tokens, computed per ``mode``.

    Args:
        block: the open_clip ``ResidualAttentionBlock`` (an ``nn.MultiheadAttention`` as ``attn``).
        x: its input tokens, class token first, N = gh · gw patches.
        mode: one of :data:`DENSE_MODES`.
        grid: (gh, gw).
        gaussian_std: ``naclip``'s ω width in patches.
        proxy: ``proxyclip``'s (B, Hp, Wp, C) proxy features.
        beta, gamma: ``proxyclip``'s attention settings.

    Returns:
        (B, 1 + N, D) tokens (``sclip``, ``naclip``) or (B, Hp · Wp, D) tokens on the proxy's grid (``proxyclip``).
    """
    heads = block.attn.num_heads
    out_proj = block.attn.out_proj
    if mode == "sclip":
        q, k, v = (split_heads(t, heads) for t in _projections(block, x, "qkv"))
        y = out_proj(merge_heads(correlative_attention(q, k, v)))
        x = x + block.ls_1(y)
        return x + block.ls_2(block.mlp(block.ln_2(x)))
    if mode == "naclip":
        k, v = (split_heads(t, heads) for t in _projections(block, x, "kv"))
        bias = neighbourhood_bias(*grid, gaussian_std, device=x.device, dtype=x.dtype)
        return out_proj(merge_heads(F.scaled_dot_product_attention(k, k, v, attn_mask=bias)))
    if mode == "proxyclip":
        if proxy is None:
            raise ValueError("mode 'proxyclip' needs proxy features")
        b, hp, wp, _ = proxy.shape
        (v,) = _projections(block, x, "v")
        # one attention for every head: the heads' values side by side are the (B, N, D) values themselves
        v = v[:, 1:].transpose(1, 2).reshape(b, -1, *grid)
        v = F.interpolate(v, size=(hp, wp), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
        attn = proxy_attention(proxy.reshape(b, hp * wp, -1).to(v.dtype), beta, gamma)
        return out_proj(attn @ v)
    raise ValueError(f"unknown dense mode {mode!r}; known: {', '.join(DENSE_MODES)}")


def dense_patch_embeddings(visual: nn.Module, pixels: torch.Tensor, mode: str, *, gaussian_std: float = 5.0,
                           proxy: torch.Tensor | None = None, beta: float = 1.2, gamma: float = 3.0
                           ) -> torch.Tensor:
    """Per-patch embeddings of an open_clip ViT with its last block computed per ``mode`` (:func:`last_block`).

    Args:
        visual: ``clip.visual`` (an open_clip ``VisionTransformer`` with class-token pooling).
        pixels: (B, 3, H, W) normalised images (:data:`PIXEL_MEAN_255`, :data:`PIXEL_STD_255`), sides multiples
            of the patch size.
        mode, gaussian_std, proxy, beta, gamma: see :func:`last_block`.

    Returns:
        (B, h, w, E) projected, L2-normalised embeddings: on the CLIP's patch grid, or on the proxy's grid for
        ``proxyclip``.
    """
    x = visual.conv1(pixels.to(visual.conv1.weight.dtype))
    gh, gw = (int(s) for s in x.shape[-2:])
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + dino_pos_embed(visual.positional_embedding, gh, gw).to(x.dtype)
    x = visual.ln_pre(x)
    blocks = visual.transformer.resblocks
    for blk in blocks[:-1]:
        x = blk(x)
    x = last_block(blocks[-1], x, mode, (gh, gw), gaussian_std=gaussian_std, proxy=proxy, beta=beta, gamma=gamma)
    x = visual.ln_post(x)
    if visual.proj is not None:
        x = x @ visual.proj
    x = F.normalize(x.float(), dim=-1)
    if mode == "proxyclip":
        return x.reshape(x.shape[0], proxy.shape[1], proxy.shape[2], -1)
    return x[:, 1:].reshape(x.shape[0], gh, gw, -1)


__all__ = ["DENSE_MODES", "PIXEL_MEAN_255", "PIXEL_STD_255", "correlative_attention", "dense_patch_embeddings",
           "dino_pos_embed", "last_block", "merge_heads", "neighbourhood_bias", "proxy_attention", "split_heads"]
