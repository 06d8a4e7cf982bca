"""FP8 (block / channel / tensor scaled) and MXFP4 decoding against references written here.

FP8: torch's own float8_e4m3fn decoding to float32, times the scale expanded to the
weight's shape, in float32 (DeepSeek's weight_dequant computes the same). MXFP4: the OCP MX v1.0 spec written
out from its bit fields (sign, 2 exponent bits with bias 1, 1 mantissa bit, E8M0 scale
2**(e - 127), 0xFF = NaN), not from a table.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from weightsurgeon.kernels.quant import dequantize_fp8, dequantize_mxfp4

torch = pytest.importorskip("torch")


def _every_code(rows: int, cols: int, seed: int) -> np.ndarray:
    """Codes with every one of the 256 E4M3 patterns (denormals, +-0, NaN 0x7F/0xFF, +-448) and random ones."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, size=rows * cols, dtype=np.uint8)
    codes[:256] = np.arange(256, dtype=np.uint8)
    return codes.reshape(rows, cols)


def _torch_fp8_reference(codes: np.ndarray, scales: np.ndarray, br: int, bc: int) -> np.ndarray:
    w = torch.from_numpy(codes.copy()).view(torch.float8_e4m3fn)
    s = torch.from_numpy(scales.astype(np.float32))
    expanded = s.repeat_interleave(br, dim=0)[: codes.shape[0]].repeat_interleave(bc, dim=1)[:, : codes.shape[1]]
    out = w.to(torch.float32) * expanded  # as DeepSeek's weight_dequant: x.to(float32) * s
    return out.numpy().astype(np.float64)


def _same(ours: np.ndarray, ref: np.ndarray) -> None:
    ours = ours.astype(np.float64).reshape(ref.shape)
    assert np.array_equal(np.isnan(ours), np.isnan(ref))
    finite = ~np.isnan(ref)
    assert np.array_equal(ours[finite], ref[finite])
    assert np.array_equal(np.signbit(ours[finite]), np.signbit(ref[finite]))  # -0.0 stays -0.0


@pytest.mark.parametrize("rows,cols,br,bc", [(300, 260, 128, 128), (128, 128, 128, 128), (5, 7, 2, 3),
                                             (129, 1, 128, 128), (1, 300, 128, 128)])
def test_fp8_block_scales_match_torch(rows: int, cols: int, br: int, bc: int) -> None:
    codes = _every_code(rows, cols, rows + cols) if rows * cols >= 256 else \
        np.random.default_rng(0).integers(0, 256, (rows, cols), dtype=np.uint8)
    rng = np.random.default_rng(1)
    scales = (rng.random((-(-rows // br), -(-cols // bc))) * 1e-3 + 1e-5).astype(np.float32)
    ref = _torch_fp8_reference(codes, scales, br, bc)
    # the whole tensor at once, and row slices that start inside a block row (streamed)
    _same(dequantize_fp8(codes.reshape(-1), "F8_E4M3", scales, (br, bc), 0, cols), ref)
    for start, stop in ((0, 1), (3, min(rows, 130)), (rows - 1, rows)):
        if start >= stop:
            continue
        s0, s1 = start // br, -(-stop // br)
        part = dequantize_fp8(codes[start:stop].reshape(-1), "F8_E4M3", scales[s0:s1], (br, bc), start, cols)
        _same(part, ref[start:stop])


def test_fp8_corner_values() -> None:
    codes = np.array([[0x7E, 0xFE, 0x7F, 0xFF, 0x01, 0x81, 0x00, 0x80, 0x08, 0x07]], dtype=np.uint8)
    values = dequantize_fp8(codes.reshape(-1), "F8_E4M3", np.array([[1.0]], np.float32), (128, 128), 0, 10)
    assert values[0] == 448.0 and values[1] == -448.0
    assert math.isnan(values[2]) and math.isnan(values[3])
    assert values[4] == 2.0 ** -9 and values[5] == -(2.0 ** -9)  # smallest denormal
    assert values[6] == 0.0 and np.signbit(values[7])
    assert values[8] == 2.0 ** -6 and values[9] == 7 * 2.0 ** -9  # smallest normal, largest denormal
    # a scale that overflows float32 gives inf, as float32 arithmetic does
    big = dequantize_fp8(codes.reshape(-1), "F8_E4M3", np.array([[3e38]], np.float32), (128, 128), 0, 10)
    assert np.isinf(big[0]) and np.isinf(big[1]) and big[1] < 0


def test_fp8_per_channel_and_bf16_scales() -> None:
    codes = _every_code(64, 48, 3)
    scales = np.random.default_rng(4).random((64, 1)).astype(np.float32)
    _same(dequantize_fp8(codes.reshape(-1), "F8_E4M3", scales, (1, 48), 0, 48),
          _torch_fp8_reference(codes, scales, 1, 48))
    _same(dequantize_fp8(codes[10:20].reshape(-1), "F8_E4M3", scales[10:20], (1, 48), 10, 48),
          _torch_fp8_reference(codes, scales, 1, 48)[10:20])
    # bf16 scales (Qwen3-FP8): the scale's bf16 value, in float32
    bf16 = torch.from_numpy(scales).to(torch.bfloat16)
    exact = bf16.float().numpy()
    _same(dequantize_fp8(codes.reshape(-1), "F8_E4M3", exact, (1, 48), 0, 48), _torch_fp8_reference(codes, exact, 1, 48))


def _ocp_e2m1(code: int) -> float:
    sign = -1.0 if code & 0x8 else 1.0
    exp = (code >> 1) & 0x3
    man = code & 0x1
    if exp == 0:
        return sign * man * 0.5  # subnormal: 2**(1-1) * (0.m)
    return sign * 2.0 ** (exp - 1) * (1 + man / 2)


def _ocp_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    out = np.empty(blocks.shape[:-1] + (32,), dtype=np.float64)
    flat_b = blocks.reshape(-1, 16)
    flat_o = out.reshape(-1, 32)
    flat_s = scales.reshape(-1)
    for g in range(flat_b.shape[0]):
        scale = math.nan if flat_s[g] == 255 else 2.0 ** (int(flat_s[g]) - 127)
        for k in range(16):
            byte = int(flat_b[g, k])
            flat_o[g, 2 * k] = _ocp_e2m1(byte & 0xF) * scale
            flat_o[g, 2 * k + 1] = _ocp_e2m1(byte >> 4) * scale
    return out.reshape(-1)


def test_mxfp4_matches_the_ocp_spec() -> None:
    rng = np.random.default_rng(5)
    blocks = rng.integers(0, 256, size=(3, 7, 5, 16), dtype=np.uint8)
    blocks.reshape(-1)[:256] = np.arange(256, dtype=np.uint8)
    scales = rng.integers(100, 140, size=(3, 7, 5), dtype=np.uint8)
    scales.reshape(-1)[:4] = [0, 1, 254, 255]  # 2**-127 (a float32 denormal), 2**-126, 2**127, NaN
    ref = _ocp_mxfp4(blocks, scales)
    ours = dequantize_mxfp4(blocks.reshape(-1), scales.reshape(-1)).astype(np.float64)
    with np.errstate(over="ignore"):
        ref32 = ref.astype(np.float32).astype(np.float64)  # the definition is in float32: 6 * 2**127 overflows
    assert np.array_equal(np.isnan(ours), np.isnan(ref32))
    keep = ~np.isnan(ref32)
    assert np.array_equal(ours[keep], ref32[keep])
    exact = keep & np.isfinite(ref32)
    assert np.isinf(ours).any() and np.array_equal(ours[exact], ref[exact])  # exact wherever float32 holds the value
    # slices of whole groups decode the same
    part = dequantize_mxfp4(blocks.reshape(-1, 16)[40:70].reshape(-1), scales.reshape(-1)[40:70])
    assert np.array_equal(part.astype(np.float64)[~np.isnan(part)], ours[40 * 32:70 * 32][~np.isnan(part)])


def test_mxfp4_matches_transformers_unpacking() -> None:
    mx = pytest.importorskip("transformers.integrations.mxfp4")
    rng = np.random.default_rng(6)
    blocks = rng.integers(0, 256, size=(2, 6, 3, 16), dtype=np.uint8)
    scales = rng.integers(115, 135, size=(2, 6, 3), dtype=np.uint8)
    theirs = mx.convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales), dtype=torch.float32)
    # transformers returns [experts, in, out] (transposed); ours is the stored [experts, rows, groups * 32]
    ours = dequantize_mxfp4(blocks.reshape(-1), scales.reshape(-1)).reshape(2, 6, 96)
    assert np.array_equal(ours.transpose(0, 2, 1), theirs.numpy())


@pytest.mark.parametrize("dtype,torch_dtype", [("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")])
def test_fp8_encoding_matches_torch_on_every_midpoint(dtype: str, torch_dtype: str) -> None:
    """Round to nearest even, including exact ties between neighbouring codes, saturation (E4M3) and inf (E5M2)."""
    from weightsurgeon.kernels.decode import _f8_table, encode_from_float32

    table = _f8_table(dtype).astype(np.float64)[:127]
    finite = table[np.isfinite(table)]
    mids = (finite[1:] + finite[:-1]) / 2
    rng = np.random.default_rng(8)
    x = np.concatenate([mids, -mids, np.nextafter(mids, 0), np.nextafter(mids, 1e9), finite, -finite,
                        rng.standard_normal(50_000) * 10.0 ** rng.integers(-8, 6, 50_000), [0.0, -0.0, 1e6, -1e6, 61440.0]])
    x = x.astype(np.float32)
    theirs = torch.from_numpy(x).to(getattr(torch, torch_dtype)).view(torch.uint8).numpy()
    assert np.array_equal(encode_from_float32(x, dtype), theirs)


def test_fp8_block_quantizer_matches_torch() -> None:
    """The synthetic checkpoints' quantizer: scale = block amax / 448, codes = (w / scale) cast as torch casts."""
    from weightsurgeon.kernels.quant import quantize_fp8_blocks

    w = (np.random.default_rng(9).standard_normal((200, 300)) * 0.02).astype(np.float32)
    codes, scales = quantize_fp8_blocks(w, (128, 128))
    t = torch.from_numpy(w)
    for i in range(2):
        for j in range(3):
            blk = t[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
            s = blk.abs().max() / 448.0
            assert scales[i, j] == s.item()
            want = (blk / s).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
            assert np.array_equal(codes[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128], want)
