"""PVT v2 (Wang et al. 2021, arXiv 2106.13797) with hand-written backward passes.

Structure, names and defaults follow timm's ``pvt_v2`` (parameter names equal
timm's state_dict keys), which follows the official whai362/PVT code. The
paper's three ideas live here:

* linear spatial-reduction attention (``Attention`` with ``linear_attn=True``):
  keys/values come from a fixed pool_size x pool_size average-pooled map, so
  the attention cost grows linearly with the number of tokens;
* overlapping patch embedding (``OverlapPatchEmbed``): a conv with kernel
  2S-1, stride S, padding S-1, so neighbouring patches share pixels;
* the convolutional FFN (``MlpWithDepthwiseConv``): a 3x3 depthwise conv with
  zero padding between the two linear layers, which gives position information
  without a position-embedding table, so any input size works.

Activations travel as tokens (B, H*W, C); a token array reshaped to
(B, H, W, C) is the channels-last feature map, so the convs run channels-last
and no transposes are needed between attention and convolution.

Each layer's docstring names the ops it runs; ``help(pvt_np.ops.<op>_forward)``
(and ``_backward``) shows that op's formula and derived gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pvt_np import backend, ops
from pvt_np.backend import Array
from pvt_np.nn import (
    GELU,
    AdaptiveAvgPool2d,
    Conv2d,
    Dropout,
    DropPath,
    Identity,
    LayerNorm,
    Linear,
    Module,
    ModuleList,
    ReLU,
)
from pvt_np.ops.checks import check_array

BLOCK_NORM_EPS = 1e-6  # LayerNorm eps in blocks and stage norms (official code, timm)
EMBED_NORM_EPS = 1e-5  # LayerNorm eps in patch embeddings and the SRA norm (nn.LayerNorm default)


def pyramid_sizes(height: int, width: int, kernels: Sequence[int], strides: Sequence[int]) -> list[tuple[int, int]]:
    """(H, W) of each stage's map: stage i's patch embedding is a conv with kernel ``kernels[i]``,
    stride ``strides[i]`` and padding ``kernels[i] // 2`` (:class:`OverlapPatchEmbed`) on the previous map.

    Each side follows torch's conv size, floor((size + 2 * padding - kernel) / stride) + 1;
    nothing is checked (a map may come out empty: see ``feature_sizes``).
    """
    sizes = []
    h, w = int(height), int(width)
    for kernel, stride in zip(kernels, strides, strict=True):
        h, w = (
            ops.conv_output_size(h, kernel, stride, kernel // 2),
            ops.conv_output_size(w, kernel, stride, kernel // 2),
        )
        sizes.append((h, w))
    return sizes


def min_conv_input(output: int, kernel: int, stride: int, padding: int) -> int:
    """The smallest input side (>= 1) whose conv output side is at least ``output``.

    floor((n + 2p - k) / s) + 1 >= m  <=>  n + 2p - k >= s (m - 1)  <=>  n >= s (m - 1) + k - 2p.
    """
    return max(1, stride * (max(output, 1) - 1) + kernel - 2 * padding)


class OverlapPatchEmbed(Module):
    """Conv (kernel patch_size, stride, padding patch_size // 2) then LayerNorm (eps 1e-5).

    With patch_size = 2S - 1 and stride S the windows overlap by S - 1 pixels
    (7/4/3 at the stem, 3/2/1 between stages). Takes NCHW images
    (``channels_last_input=False``, the stem) or NHWC maps (between stages);
    returns the normalised NHWC map (B, H', W', embed_dim).

    Ops: ``pvt_np.ops.conv2d_forward`` / ``conv2d_backward``, ``layer_norm_forward`` / ``layer_norm_backward``.
    """

    def __init__(
        self,
        patch_size: int = 7,
        stride: int = 4,
        in_chans: int = 3,
        embed_dim: int = 768,
        channels_last_input: bool = False,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        if patch_size <= stride:
            raise ValueError(
                f"OverlapPatchEmbed: patch_size ({patch_size}) must be larger than stride ({stride}) to overlap"
            )
        self.patch_size, self.stride = int(patch_size), int(stride)
        self.channels_last_input = bool(channels_last_input)
        self.proj = Conv2d(
            in_chans,
            embed_dim,
            patch_size,
            stride=stride,
            padding=patch_size // 2,
            dtype=dtype,
            channels_last=channels_last_input,
        )
        self.norm = LayerNorm(embed_dim, eps=EMBED_NORM_EPS, dtype=dtype)

    def forward(self, x: Array) -> Array:
        y = self.proj(x)
        if not self.channels_last_input:
            y = y.transpose(0, 2, 3, 1)  # back to the conv's contiguous NHWC result
        return self.norm(y)

    def backward(self, dout: Array, input_grad: bool = True) -> Array | None:
        dy = self.norm.backward(dout)
        if not self.channels_last_input:
            dy = dy.transpose(0, 3, 1, 2)
        return self.proj.backward(dy, input_grad)


class Attention(Module):
    """Multi-head attention whose keys/values may come from a spatially reduced map.

    sr_ratio == 1, linear_attn False: full attention, M = N = H*W keys.
    sr_ratio == R > 1: SRA -- keys/values from a conv with kernel = stride = R
        then LayerNorm, M = (H/R)(W/R): cost / R^2.
    linear_attn True: linear SRA -- AdaptiveAvgPool2d(pool_size), 1x1 conv,
        LayerNorm, GELU: M = pool_size^2 whatever the input size.

    Ops (each ``pvt_np.ops.<op>_forward`` / ``_backward``): linear (q, kv, proj), attention
    (softmax(q k^T * scale) v, attention dropout inside), dropout (proj_drop); SRA adds conv2d and
    layer_norm; linear SRA adds adaptive_avg_pool2d, conv2d, layer_norm and gelu.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        sr_ratio: int = 1,
        linear_attn: bool = False,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        pool_size: int = 7,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim, self.num_heads = int(dim), int(num_heads)
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.sr_ratio, self.linear_attn, self.pool_size = int(sr_ratio), bool(linear_attn), int(pool_size)
        self.attn_drop_p = float(attn_drop)
        self.q = Linear(dim, dim, bias=qkv_bias, dtype=dtype)
        self.kv = Linear(dim, dim * 2, bias=qkv_bias, dtype=dtype)
        self.proj = Linear(dim, dim, dtype=dtype)
        self.proj_drop = Dropout(proj_drop)
        self.pool: Module | None = None
        self.sr: Module | None = None
        self.norm: Module | None = None
        self.act: Module | None = None
        if linear_attn:
            self.pool = AdaptiveAvgPool2d(pool_size, channels_last=True)
            self.sr = Conv2d(dim, dim, kernel_size=1, stride=1, dtype=dtype, channels_last=True)
            self.norm = LayerNorm(dim, eps=EMBED_NORM_EPS, dtype=dtype)
            self.act = GELU()
        elif sr_ratio > 1:
            self.sr = Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio, dtype=dtype, channels_last=True)
            self.norm = LayerNorm(dim, eps=EMBED_NORM_EPS, dtype=dtype)

    def _reduce(self, x: Array, feat_size: tuple[int, int]) -> tuple[Array, tuple[int, int]]:
        """The tokens that keys and values are computed from, and their map size."""
        if self.sr is None:
            return x, feat_size
        fmap = ops.tokens_to_nhwc(x, feat_size)
        if self.pool is not None:
            fmap = self.pool(fmap)
        fmap = self.sr(fmap)
        reduced_size = (fmap.shape[1], fmap.shape[2])
        tokens = self.norm(ops.nhwc_to_tokens(fmap))
        return (self.act(tokens) if self.act is not None else tokens), reduced_size

    def _reduce_backward(self, dtokens: Array, reduced_size: tuple[int, int]) -> Array:
        if self.sr is None:
            return dtokens
        if self.act is not None:
            dtokens = self.act.backward(dtokens)
        dtokens = self.norm.backward(dtokens)
        dmap = self.sr.backward(ops.tokens_to_nhwc(dtokens, reduced_size))
        if self.pool is not None:
            dmap = self.pool.backward(dmap)
        return ops.nhwc_to_tokens(dmap)

    def forward(self, x: Array, feat_size: tuple[int, int]) -> Array:
        b, n, c = x.shape
        h, d = self.num_heads, self.head_dim
        q = self.q(x).reshape(b, n, h, d).transpose(0, 2, 1, 3)  # (B, h, N, d)
        kv_tokens, reduced_size = self._reduce(x, feat_size)
        m = kv_tokens.shape[1]
        kv = self.kv(kv_tokens).reshape(b, m, 2, h, d)
        k = kv[:, :, 0].transpose(0, 2, 1, 3)  # (B, h, M, d)
        v = kv[:, :, 1].transpose(0, 2, 1, 3)
        p = self.attn_drop_p if self.training else 0.0
        out, attn_cache = ops.attention_forward(q, k, v, scale=self.scale, dropout_p=p, layer=self._label())
        self._save((attn_cache, reduced_size, m))
        out = out.transpose(0, 2, 1, 3).reshape(b, n, c)
        return self.proj_drop(self.proj(out))

    def backward(self, dout: Array) -> Array:
        attn_cache, reduced_size, m = self._pop_cache()
        xp = backend.get_array_module(dout)
        b, n, c = dout.shape
        h, d = self.num_heads, self.head_dim
        dattn = self.proj.backward(self.proj_drop.backward(dout))
        dattn = dattn.reshape(b, n, h, d).transpose(0, 2, 1, 3)
        dq, dk, dv = ops.attention_backward(dattn, attn_cache)
        dkv = xp.empty((b, m, 2, h, d), dtype=dout.dtype)
        dkv[:, :, 0] = dk.transpose(0, 2, 1, 3)
        dkv[:, :, 1] = dv.transpose(0, 2, 1, 3)
        dx = self._reduce_backward(self.kv.backward(dkv.reshape(b, m, 2 * c)), reduced_size)
        dx += self.q.backward(dq.transpose(0, 2, 1, 3).reshape(b, n, c))
        return dx

    def attention_probs(self) -> Array:
        """The attention weights softmax(q k^T * scale) of the last forward, (B, heads, N, M), before dropout.

        They are kept for the backward, so they can be read after a forward (not under no_grad)
        until backward runs. Query n's row is a distribution over the M keys: the whole map
        (full attention), the R-times reduced map (SRA) or the pool_size x pool_size map (linear SRA).
        """
        return self._peek_cache()[0].probs

    def extra_repr(self) -> str:
        mode = f"linear SRA (pool {self.pool_size})" if self.linear_attn else f"sr_ratio={self.sr_ratio}"
        return f"dim={self.dim}, num_heads={self.num_heads}, {mode}"


class MlpWithDepthwiseConv(Module):
    """fc1 -> relu (ReLU, linear variant; else Identity) -> 3x3 depthwise conv, zero padding 1 -> GELU -> fc2.

    The depthwise conv mixes each channel over its 3x3 neighbourhood; its zero
    padding lets the network tell borders from the centre, which is the
    position information that PVT v1's position-embedding table provided.

    Ops (each ``pvt_np.ops.<op>_forward`` / ``_backward``): linear (fc1, fc2), relu (linear
    variant), conv2d (dwconv, groups = channels), gelu, dropout (drop1, drop2).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        drop: float = 0.0,
        extra_relu: bool = False,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = Linear(in_features, hidden_features, dtype=dtype)
        self.relu = ReLU() if extra_relu else Identity()
        self.dwconv = Conv2d(
            hidden_features, hidden_features, 3, 1, 1, groups=hidden_features, dtype=dtype, channels_last=True
        )
        self.act = GELU()
        self.drop1 = Dropout(drop)
        self.fc2 = Linear(hidden_features, out_features, dtype=dtype)
        self.drop2 = Dropout(drop)

    def forward(self, x: Array, feat_size: tuple[int, int]) -> Array:
        x = self.relu(self.fc1(x))
        x = ops.nhwc_to_tokens(self.dwconv(ops.tokens_to_nhwc(x, feat_size)))
        x = self.drop1(self.act(x))
        self._save(feat_size)
        return self.drop2(self.fc2(x))

    def backward(self, dout: Array) -> Array:
        feat_size = self._pop_cache()
        dx = self.act.backward(self.drop1.backward(self.fc2.backward(self.drop2.backward(dout))))
        dx = ops.nhwc_to_tokens(self.dwconv.backward(ops.tokens_to_nhwc(dx, feat_size)))
        return self.fc1.backward(self.relu.backward(dx))


class Block(Module):
    """Pre-norm transformer block: x + DropPath(Attention(LN(x))), then x + DropPath(MLP(LN(x))).

    Ops: ``pvt_np.ops.layer_norm_forward`` / ``_backward`` (norm1, norm2), ``drop_path_forward`` /
    ``_backward`` (drop_path > 0), and those of :class:`Attention` and :class:`MlpWithDepthwiseConv`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        sr_ratio: int = 1,
        linear_attn: bool = False,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        pool_size: int = 7,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=BLOCK_NORM_EPS, dtype=dtype)
        self.attn = Attention(
            dim, num_heads, sr_ratio, linear_attn, qkv_bias, attn_drop, proj_drop, pool_size, dtype=dtype
        )
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else Identity()
        self.norm2 = LayerNorm(dim, eps=BLOCK_NORM_EPS, dtype=dtype)
        self.mlp = MlpWithDepthwiseConv(dim, int(dim * mlp_ratio), drop=proj_drop, extra_relu=linear_attn, dtype=dtype)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else Identity()

    def forward(self, x: Array, feat_size: tuple[int, int]) -> Array:
        x = x + self.drop_path1(self.attn(self.norm1(x), feat_size))
        return x + self.drop_path2(self.mlp(self.norm2(x), feat_size))

    def backward(self, dout: Array) -> Array:
        # Each residual add passes the gradient unchanged to both of its inputs.
        dx = dout + self.norm2.backward(self.mlp.backward(self.drop_path2.backward(dout)))
        return dx + self.norm1.backward(self.attn.backward(self.drop_path1.backward(dx)))


class PyramidVisionTransformerStage(Module):
    """Optional overlapping downsample (3x3, stride 2), `depth` Blocks, then LayerNorm (eps 1e-6).

    Takes and returns channels-last maps (B, H, W, C).

    Ops: those of :class:`OverlapPatchEmbed` (the downsample) and :class:`Block`, then
    ``pvt_np.ops.layer_norm_forward`` / ``_backward`` (norm).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        depth: int,
        downsample: bool = True,
        num_heads: int = 8,
        sr_ratio: int = 1,
        linear_attn: bool = False,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: Sequence[float] | float = 0.0,
        pool_size: int = 7,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        if downsample:
            self.downsample: Module | None = OverlapPatchEmbed(
                3, 2, dim, dim_out, channels_last_input=True, dtype=dtype
            )
        elif dim != dim_out:
            raise ValueError(
                f"PyramidVisionTransformerStage: without downsample dim ({dim}) must equal dim_out ({dim_out})"
            )
        else:
            self.downsample = None
        rates = list(drop_path) if isinstance(drop_path, Sequence) else [float(drop_path)] * depth
        self.blocks = ModuleList(
            [
                Block(
                    dim_out,
                    num_heads,
                    mlp_ratio,
                    sr_ratio,
                    linear_attn,
                    qkv_bias,
                    proj_drop,
                    attn_drop,
                    rates[i],
                    pool_size,
                    dtype=dtype,
                )
                for i in range(depth)
            ]
        )
        self.norm = LayerNorm(dim_out, eps=BLOCK_NORM_EPS, dtype=dtype)

    def forward(self, x: Array) -> Array:
        if self.downsample is not None:
            x = self.downsample(x)
        _b, h, w, _c = x.shape
        feat_size = (h, w)
        tokens = ops.nhwc_to_tokens(x)
        for blk in self.blocks:
            tokens = blk(tokens, feat_size)
        self._save(feat_size)
        return ops.tokens_to_nhwc(self.norm(tokens), feat_size)

    def backward(self, dout: Array) -> Array:
        feat_size = self._pop_cache()
        dtokens = self.norm.backward(ops.nhwc_to_tokens(dout))
        for blk in reversed(list(self.blocks)):
            dtokens = blk.backward(dtokens)
        dmap = ops.tokens_to_nhwc(dtokens, feat_size)
        return self.downsample.backward(dmap) if self.downsample is not None else dmap


class PyramidVisionTransformerV2(Module):
    """Stem (overlapping patch embed), four stages, global average pool, linear head.

    ``logits = model(x)`` on NCHW images of any size the pyramid fits in;
    ``dx = model.backward(dlogits)``. ``forward_pyramid`` returns the four
    stage maps (strides 4, 8, 16, 32 with the default stem) for dense tasks,
    and ``backward_pyramid`` takes a gradient for each of them.

    Ops: those of :class:`OverlapPatchEmbed` (the stem) and the stages, then
    ``pvt_np.ops.token_mean_forward`` / ``_backward`` (the global average pool),
    ``dropout_forward`` / ``_backward`` (head_drop) and ``linear_forward`` / ``_backward`` (head).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = (3, 4, 6, 3),
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        num_heads: Sequence[int] = (1, 2, 4, 8),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        mlp_ratios: Sequence[float] = (8.0, 8.0, 4.0, 4.0),
        qkv_bias: bool = True,
        linear: bool = False,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        patch_size: int = 7,
        stride: int = 4,
        pool_size: int = 7,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        num_stages = len(depths)
        per_stage = {"embed_dims": embed_dims, "num_heads": num_heads, "sr_ratios": sr_ratios, "mlp_ratios": mlp_ratios}
        for name, values in per_stage.items():
            if len(values) != num_stages:
                raise ValueError(
                    f"PyramidVisionTransformerV2: {name} needs {num_stages} values (one per stage), got {tuple(values)}"
                )
        self.in_chans, self.num_classes = int(in_chans), int(num_classes)
        self.depths, self.embed_dims = tuple(depths), tuple(embed_dims)
        self.num_heads, self.sr_ratios, self.mlp_ratios = tuple(num_heads), tuple(sr_ratios), tuple(mlp_ratios)
        self.linear, self.pool_size = bool(linear), int(pool_size)
        self.patch_size, self.stride = int(patch_size), int(stride)
        self.num_features = self.embed_dims[-1]
        self.patch_embed = OverlapPatchEmbed(patch_size, stride, in_chans, embed_dims[0], dtype=dtype)
        # Drop-path rate grows linearly over all blocks (timm's stage-wise split of one linspace).
        rates = np.linspace(0.0, drop_path_rate, sum(depths)).tolist()
        self.stages = ModuleList()
        start, prev_dim = 0, embed_dims[0]
        for i in range(num_stages):
            self.stages.append(
                PyramidVisionTransformerStage(
                    prev_dim,
                    embed_dims[i],
                    depths[i],
                    downsample=i > 0,
                    num_heads=num_heads[i],
                    sr_ratio=sr_ratios[i],
                    linear_attn=linear,
                    mlp_ratio=mlp_ratios[i],
                    qkv_bias=qkv_bias,
                    proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=rates[start : start + depths[i]],
                    pool_size=pool_size,
                    dtype=dtype,
                )
            )
            start += depths[i]
            prev_dim = embed_dims[i]
        self.head_drop = Dropout(drop_rate)
        self.head = Linear(self.num_features, num_classes, dtype=dtype) if num_classes > 0 else Identity()
        self.set_names()

    # -- geometry ---------------------------------------------------------
    def _patch_embeds(self) -> list[OverlapPatchEmbed]:
        """The stem, then each later stage's downsampling embedding: the convs that set the map sizes."""
        return [self.patch_embed, *(stage.downsample for stage in list(self.stages)[1:])]

    def _min_map_sizes(self) -> list[int]:
        """The side each stage's map needs: one SR window (sr_ratio), or one token (linear SRA pools any map)."""
        return [1 if self.linear else ratio for ratio in self.sr_ratios]

    def feature_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(H, W) of each stage's map for an input of height x width; a clear error if it does not fit."""
        embeds = self._patch_embeds()
        sizes = pyramid_sizes(height, width, [e.patch_size for e in embeds], [e.stride for e in embeds])
        for i, ((h, w), need) in enumerate(zip(sizes, self._min_map_sizes(), strict=True)):
            if h < need or w < need:
                why = "a non-empty map" if self.linear else f"sr_ratio {need}"
                side = self.min_input_size()[0]
                raise ValueError(
                    f"{type(self).__name__}: input {height}x{width} is too small: stage {i} map would be {h}x{w}, "
                    f"but needs at least {need}x{need} ({why}); minimum input is {side}x{side}"
                )
        return sizes

    def min_input_size(self) -> tuple[int, int]:
        """The smallest square input the pyramid (stem, downsamples, SR convs) accepts.

        Each map side grows with the input side, so the answer is the largest of
        the inputs each stage needs alone; that one comes from running the conv
        size formula backwards (:func:`min_conv_input`) from the stage's map down
        to the image.
        """
        embeds = self._patch_embeds()
        side = 1
        for i, need in enumerate(self._min_map_sizes()):
            for embed in reversed(embeds[: i + 1]):
                need = min_conv_input(need, embed.patch_size, embed.stride, embed.patch_size // 2)
            side = max(side, need)
        return side, side

    def _check_input(self, x: Array) -> None:
        name = type(self).__name__
        check_array(x, name)
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"{name}: expected input of shape (N, {self.in_chans}, H, W), got {tuple(x.shape)}")
        if x.dtype != self.dtype:
            raise TypeError(
                f"{name}: input dtype {x.dtype} does not match the model's {self.dtype} "
                "(cast the input, or the model with .to(dtype=...))"
            )
        if backend.device_of(x) != self.device:
            raise ValueError(f"{name}: input is on {backend.device_of(x)} but the model is on {self.device}")
        self.feature_sizes(x.shape[2], x.shape[3])

    # -- forward / backward -----------------------------------------------
    def _run_stages(self, x: Array) -> list[Array]:
        """The channels-last map after each stage."""
        self._check_input(x)
        fmap = self.patch_embed(x)
        maps = []
        for stage in self.stages:
            fmap = stage(fmap)
            maps.append(fmap)
        return maps

    def _backward_stages(self, dmaps: Sequence[Array | None], input_grad: bool = True) -> Array | None:
        """Backward through the stages from per-stage map gradients (channels-last, None = unused)."""
        dmap = None
        for stage, g in zip(reversed(list(self.stages)), reversed(list(dmaps)), strict=True):
            if g is not None:
                dmap = g if dmap is None else dmap + g
            if dmap is None:
                continue  # nothing flows back from a stage whose output and successors are unused
            dmap = stage.backward(dmap)
        if dmap is None:
            raise ValueError(f"{type(self).__name__}: at least one stage map needs a gradient")
        return self.patch_embed.backward(dmap, input_grad)

    def _pop(self, kind: str) -> Any:
        saved_kind, payload = self._pop_cache()
        if saved_kind != kind:
            raise RuntimeError(f"{type(self).__name__}: backward_{kind} called after forward_{saved_kind}")
        return payload

    def forward_pyramid(self, x: Array) -> list[Array]:
        """The four stage outputs as NCHW maps (views of the channels-last maps).

        With the default stem their strides are 4, 8, 16 and 32 pixels.
        """
        maps = self._run_stages(x)
        self._save(("pyramid", None))
        return [m.transpose(0, 3, 1, 2) for m in maps]

    def backward_pyramid(self, dmaps: Sequence[Array | None], input_grad: bool = True) -> Array | None:
        """Input gradient from gradients w.r.t. forward_pyramid's NCHW maps (None for an unused map).

        ``input_grad=False`` skips the stem's col2im and returns None, as :meth:`backward` does.
        """
        self._pop("pyramid")
        if len(dmaps) != len(self.stages):
            raise ValueError(f"backward_pyramid: expected {len(self.stages)} gradients, got {len(dmaps)}")
        return self._backward_stages([None if g is None else g.transpose(0, 2, 3, 1) for g in dmaps], input_grad)

    def forward_features(self, x: Array) -> Array:
        """The last stage's normalised map as tokens (B, H*W, C)."""
        fmap = self._run_stages(x)[-1]
        self._save(("features", fmap.shape))
        return ops.nhwc_to_tokens(fmap)

    def backward_features(self, dtokens: Array) -> Array:
        """Input gradient from the gradient w.r.t. forward_features' tokens."""
        map_shape = self._pop("features")
        return self._backward_stages([None] * (len(self.stages) - 1) + [dtokens.reshape(map_shape)])

    def forward(self, x: Array) -> Array:
        """Logits (B, num_classes): stages, mean over the last map's tokens, dropout, head."""
        fmap = self._run_stages(x)[-1]
        pooled, pool_cache = ops.token_mean_forward(ops.nhwc_to_tokens(fmap))
        self._save(("logits", (fmap.shape, pool_cache)))
        return self.head(self.head_drop(pooled))

    def backward(self, dlogits: Array, input_grad: bool = True) -> Array | None:
        """Input gradient (B, C, H, W); every parameter's gradient is added to its .grad.

        Training needs no gradient w.r.t. the images: ``input_grad=False`` skips the
        stem's col2im (as torch does for inputs without requires_grad) and returns None.
        """
        kind, payload = self._peek_cache()
        if kind != "logits":
            self._pop("logits")  # raises: the last forward was forward_pyramid/forward_features
        map_shape = payload[0]
        expected = (map_shape[0], self.num_classes if self.num_classes > 0 else self.num_features)
        check_array(dlogits, type(self).__name__, "gradient")
        if tuple(dlogits.shape) != expected:
            raise ValueError(
                f"{type(self).__name__}.backward: expected a gradient of shape {expected} (like the logits), "
                f"got {tuple(dlogits.shape)}"
            )
        if dlogits.dtype != self.dtype:
            raise TypeError(
                f"{type(self).__name__}.backward: expected a gradient of dtype {self.dtype} (like the logits), "
                f"got {dlogits.dtype}"
            )
        map_shape, pool_cache = self._pop("logits")
        dtokens = ops.token_mean_backward(self.head_drop.backward(self.head.backward(dlogits)), pool_cache)
        dmaps = [None] * (len(self.stages) - 1) + [dtokens.reshape(map_shape)]
        return self._backward_stages(dmaps, input_grad)

    def extra_repr(self) -> str:
        return (
            f"depths={self.depths}, embed_dims={self.embed_dims}, num_heads={self.num_heads}, "
            f"sr_ratios={self.sr_ratios}, linear={self.linear}, stem=({self.patch_size}, {self.stride}), "
            f"num_classes={self.num_classes}"
        )

    # -- initialisation -----------------------------------------------------
    def init_weights(self, seed: int = 0) -> PyramidVisionTransformerV2:
        """The official initialisation, reproducible from ``seed``.

        Linear: truncated normal, std 0.02, cut at +-2 (timm's trunc_normal_, as
        the official code); conv: normal(0, sqrt(2 / fan_out)), fan_out =
        kh * kw * out_channels / groups; LayerNorm: ones and zeros; biases: zeros.
        """
        rng = np.random.default_rng(seed)
        for _, m in self.named_modules():
            if isinstance(m, Linear):
                m.weight.data = _like(m.weight.data, _trunc_normal(rng, m.weight.shape, 0.02, -2.0, 2.0))
                if m.bias is not None:
                    m.bias.data = _like(m.bias.data, np.zeros(m.bias.shape))
            elif isinstance(m, Conv2d):
                kh, kw = m.kernel_size
                fan_out = kh * kw * m.out_channels // m.groups
                m.weight.data = _like(m.weight.data, rng.normal(0.0, np.sqrt(2.0 / fan_out), m.weight.shape))
                if m.bias is not None:
                    m.bias.data = _like(m.bias.data, np.zeros(m.bias.shape))
            elif isinstance(m, LayerNorm):
                m.weight.data = _like(m.weight.data, np.ones(m.weight.shape))
                m.bias.data = _like(m.bias.data, np.zeros(m.bias.shape))
        return self


def _like(ref: Array, values: np.ndarray) -> Array:
    """values with ref's dtype, on ref's device."""
    return backend.to_device(values.astype(ref.dtype), backend.device_of(ref))


def _trunc_normal(rng: np.random.Generator, shape: tuple[int, ...], std: float, low: float, high: float) -> np.ndarray:
    """Normal(0, std) restricted to [low, high] by redrawing the samples outside."""
    out = rng.normal(0.0, std, shape)
    bad = (out < low) | (out > high)
    while bad.any():
        out[bad] = rng.normal(0.0, std, int(bad.sum()))
        bad = (out < low) | (out > high)
    return out
