"""3x3 convolutions (stride 1, padding 1) by Winograd's minimal filtering F(4x4, 3x3), for the CPU.

Why: on a CPU the direct 3x3 convolutions of the `auto` networks already run at the cores' FMA peak, so
the only way to train faster in fp32 is fewer multiplications. Winograd's algorithm (Lavin & Gray 2016,
"Fast Algorithms for Convolutional Neural Networks") computes every 4x4 output tile from a 6x6 input tile
with 36 products per (input, output) channel pair instead of 144: a quarter of the multiply-adds, done as
36 large matrix products that BLAS runs at full speed. The result is the same correlation as
`F.conv2d(x, w, padding=1)` up to float rounding (max |error| ~1e-5 of max |output| in fp32; cuDNN uses
the same family of algorithms on GPUs).

Everything is written with differentiable tensor operations or with pairs of mutually adjoint autograd
Functions, so first and second derivatives (R1 and path-length regularisation need double backward) come
out right and stay on the fast path.

Layout of the transformed tensors: [36, tiles, channels] with tiles = N * tiles_y * tiles_x, so that the
36 products are one batched matmul [36, tiles, C] x [36, C, O].
"""
from __future__ import annotations

import torch

OUTPUT_TILE = 4  # px: each tile yields 4x4 output pixels
INPUT_TILE = OUTPUT_TILE + 2  # px: ... from 6x6 input pixels (3x3 kernel)

# F(4, 3) with interpolation points 0, 1, -1, 2, -2 and infinity (Lavin & Gray, section 4.3).
_DATA_T = [[4, 0, -5, 0, 1, 0],
           [0, -4, -4, 1, 1, 0],
           [0, 4, -4, -1, 1, 0],
           [0, -2, -1, 2, 1, 0],
           [0, 2, -1, -2, 1, 0],
           [0, 4, 0, -5, 0, 1]]
_KERNEL = [[1 / 4, 0, 0],
           [-1 / 6, -1 / 6, -1 / 6],
           [-1 / 6, 1 / 6, -1 / 6],
           [1 / 24, 1 / 12, 1 / 6],
           [1 / 24, -1 / 12, 1 / 6],
           [0, 0, 1]]
_OUTPUT_T = [[1, 1, 1, 1, 1, 0],
             [0, 1, -1, 2, -2, 0],
             [0, 1, 1, 4, 4, 0],
             [0, 1, -1, 8, -8, 1]]

_transform_cache: dict = {}


def _transforms(dtype: torch.dtype, device: torch.device):
    """The 2-D transforms as Kronecker products: data [36, 36], kernel [36, 9], output [16, 36]."""
    key = (dtype, device)
    if key not in _transform_cache:
        # Built in float64 and rounded once, so 1/6 and 1/24 are as exact as the dtype allows.
        data_t, kernel, output_t = (torch.tensor(m, dtype=torch.float64) for m in (_DATA_T, _KERNEL, _OUTPUT_T))
        _transform_cache[key] = tuple(torch.kron(m, m).to(dtype=dtype, device=device)
                                      for m in (data_t, kernel, output_t))
    return _transform_cache[key]


def _tile_counts(height: int, width: int):
    return -(-height // OUTPUT_TILE), -(-width // OUTPUT_TILE)


def _padded_size(tiles: int) -> int:
    # px: room for the 1 px convolution border and whole tiles; one tile step more than the tiles read,
    # so that the scatter below can view the padded image as whole 4 px blocks.
    return OUTPUT_TILE * (tiles + 1)


def _gather_tiles(x: torch.Tensor, tiles_y: int, tiles_x: int) -> torch.Tensor:
    """x [N, C, H, W] -> its overlapping 6x6 tiles (stride 4, 1 px zero border) as [36, N * tiles, C].

    Goes through a zero-padded channels-last copy of x, so that every tile row copied is C contiguous floats
    (gathering straight from NCHW reads one float per cache line)."""
    batch, channels, height, width = x.shape
    padded = x.new_zeros(batch, _padded_size(tiles_y), _padded_size(tiles_x), channels)
    padded[:, 1:1 + height, 1:1 + width].copy_(x.permute(0, 2, 3, 1))
    s_n, s_y, s_x, s_c = padded.stride()
    view = padded.as_strided([INPUT_TILE, INPUT_TILE, batch, tiles_y, tiles_x, channels],
                             [s_y, s_x, s_n, OUTPUT_TILE * s_y, OUTPUT_TILE * s_x, s_c])
    return view.contiguous().view(INPUT_TILE * INPUT_TILE, batch * tiles_y * tiles_x, channels)


def _scatter_tiles(tiles: torch.Tensor, shape, tiles_y: int, tiles_x: int) -> torch.Tensor:
    """Adjoint of _gather_tiles: add every tile back where it came from (overlaps add up), drop the border.

    Tile offsets 0-3 of neighbouring tiles never overlap, so the padded image, viewed as 4x4 px blocks, takes
    them in one copy; offsets 4-5 fall on rows / columns 0-1 of the next block: three shifted adds."""
    batch, channels, height, width = shape
    blocks_y, blocks_x = tiles_y + 1, tiles_x + 1
    padded = tiles.new_zeros(batch, blocks_y, OUTPUT_TILE, blocks_x, OUTPUT_TILE, channels)
    # [dy, dx, N, ty, tx, C] -> [N, ty, dy, tx, dx, C], the block layout of the padded image
    per_offset = tiles.view(INPUT_TILE, INPUT_TILE, batch, tiles_y, tiles_x, channels).permute(2, 3, 0, 4, 1, 5)
    core, spill = slice(0, OUTPUT_TILE), slice(OUTPUT_TILE, INPUT_TILE)
    spill_rows = slice(0, INPUT_TILE - OUTPUT_TILE)
    padded[:, :tiles_y, :, :tiles_x, :, :] = per_offset[:, :, core, :, core]
    padded[:, 1:, spill_rows, :tiles_x, :, :] += per_offset[:, :, spill, :, core]
    padded[:, :tiles_y, :, 1:, spill_rows, :] += per_offset[:, :, core, :, spill]
    padded[:, 1:, spill_rows, 1:, spill_rows, :] += per_offset[:, :, spill, :, spill]
    padded = padded.view(batch, blocks_y * OUTPUT_TILE, blocks_x * OUTPUT_TILE, channels)
    return padded[:, 1:1 + height, 1:1 + width].permute(0, 3, 1, 2).contiguous()


class _GatherTiles(torch.autograd.Function):
    """Tile extraction whose backward is the scatter-add (autograd's own backward of the pad and the strided
    view is several times slower), and whose double backward is the gather again."""

    @staticmethod
    def forward(ctx, x, tiles_y, tiles_x):
        ctx.geometry = (tuple(x.shape), tiles_y, tiles_x)
        return _gather_tiles(x, tiles_y, tiles_x)

    @staticmethod
    def backward(ctx, grad):
        shape, tiles_y, tiles_x = ctx.geometry
        return _ScatterTiles.apply(grad, shape, tiles_y, tiles_x), None, None


class _ScatterTiles(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tiles, shape, tiles_y, tiles_x):
        ctx.geometry = (tiles_y, tiles_x)
        return _scatter_tiles(tiles.contiguous(), shape, tiles_y, tiles_x)

    @staticmethod
    def backward(ctx, grad):
        tiles_y, tiles_x = ctx.geometry
        return _GatherTiles.apply(grad, tiles_y, tiles_x), None, None, None


class _KernelTransform(torch.autograd.Function):
    """weight [O, C, 3, 3] -> its Winograd transform [36, C, O], returned as a transposed view of a
    contiguous [36, O, C] (BLAS multiplies either layout at the same speed). Written as a Function because
    autograd's own backward of the view chain would copy the 4x weight-sized gradient into [36, O, C]
    first; this one touches weight-sized tensors only."""

    @staticmethod
    def forward(ctx, weight, kernel_t):
        ctx.save_for_backward(kernel_t)
        out_channels, channels = weight.shape[:2]
        transformed = kernel_t @ weight.reshape(out_channels * channels, 9).t()  # [36, O * C]
        return transformed.view(-1, out_channels, channels).transpose(1, 2)

    @staticmethod
    def backward(ctx, grad):
        (kernel_t,) = ctx.saved_tensors
        channels, out_channels = grad.shape[1:]
        if grad.stride(2) != 1:  # arrived as [36, O, C] memory: read it that way
            per_tap = kernel_t.t() @ grad.transpose(1, 2).reshape(grad.shape[0], -1)  # [9, O * C]
            grad_weight = per_tap.t().reshape(out_channels, channels, 3, 3)
        else:
            per_tap = kernel_t.t() @ grad.reshape(grad.shape[0], -1)  # [9, C * O]
            grad_weight = per_tap.view(3, 3, channels, out_channels).permute(3, 2, 0, 1)
        return grad_weight.contiguous(), None


def conv3x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The correlation F.conv2d(x, weight, padding=1) for x [N, C, H, W] and weight [O, C, 3, 3]."""
    batch, channels, height, width = x.shape
    out_channels = weight.shape[0]
    if tuple(weight.shape[1:]) != (channels, 3, 3):
        raise ValueError(f"winograd.conv3x3: weight {tuple(weight.shape)} does not fit input {tuple(x.shape)}")
    data_t, kernel_t, output_t = _transforms(x.dtype, x.device)
    tiles_y, tiles_x = _tile_counts(height, width)
    tiles = _GatherTiles.apply(x, tiles_y, tiles_x)                                    # [36, T, C]
    data = (data_t @ tiles.view(INPUT_TILE ** 2, -1)).view(INPUT_TILE ** 2, -1, channels)
    kernel = _KernelTransform.apply(weight, kernel_t)                                  # [36, C, O]
    products = torch.bmm(data, kernel)                                                 # [36, T, O]
    out = (output_t @ products.view(INPUT_TILE ** 2, -1))                              # [16, T * O]
    out = out.view(OUTPUT_TILE, OUTPUT_TILE, batch, tiles_y, tiles_x, out_channels)
    out = out.permute(2, 5, 3, 0, 4, 1).reshape(batch, out_channels, tiles_y * OUTPUT_TILE, tiles_x * OUTPUT_TILE)
    if out.shape[2] != height or out.shape[3] != width:
        out = out[:, :, :height, :width]
    return out


# When it pays (CPU seconds of forward + backward, 1 thread, see bench/results/winograd_cpu.md): from
# 16x16 pixels and 128 channels up. Below that the transforms and the 36 weight-sized products cost more
# than the multiplications they save.
MIN_PIXELS = 16 * 16  # output pixels per image
MIN_CHANNELS = 128  # input and output channels each


def worthwhile(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.shape[2] * x.shape[3] >= MIN_PIXELS and x.shape[1] >= MIN_CHANNELS
            and weight.shape[0] >= MIN_CHANNELS)
