"""The quant type table and its kernels (tova._core), checked against gguf-py as the oracle.

Every computable type is exercised on random rows: dequantize must equal gguf.quants.dequantize
bit for bit, vec_dot must match a float64 numpy reference, and the scalar and SIMD kernels must
agree. Data comes from gguf.quants.quantize where gguf can write the type, else from random
bytes with finite fp16 scales (valid for every block layout).
"""
import numpy as np
import pytest

import gguf
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

from tova import _core

COMPUTED = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
            T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_K]
GGUF_CAN_QUANTIZE = {T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0}
N = 2048  # 64 legacy blocks, 8 k-quant super-blocks
# "best" (the tier the engine uses) and every kernel tier this CPU runs: each SIMD path is
# checked on the machine that runs the suite, not only the best one.
TIERS = _core.cpu_tiers()
ISAS = ["best"] + TIERS
SIMD_TIERS = [t for t in TIERS if t != "scalar"]

# Byte offsets of the fp16 scale fields in each block: random bytes there could be inf/NaN.
HALF_FIELDS = {
    T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,),
}


def random_row(qtype, rng, n=N):
    """Raw bytes of n values of qtype, plus the row decoded by the oracle."""
    if qtype == T.F32:
        raw = rng.standard_normal(n).astype(np.float32).view(np.uint8)
    elif qtype == T.F16:
        raw = rng.standard_normal(n).astype(np.float16).view(np.uint8)
    elif qtype in GGUF_CAN_QUANTIZE:
        raw = gguf.quants.quantize(rng.standard_normal(n).astype(np.float32), qtype).view(np.uint8)
    else:
        block, size = GGML_QUANT_SIZES[qtype]
        blocks = rng.integers(0, 256, size=(n // block, size), dtype=np.uint8)
        if qtype == T.Q8_K:
            d = rng.uniform(-0.02, 0.02, size=n // block).astype(np.float32)
            blocks[:, 0:4] = d.view(np.uint8).reshape(-1, 4)
        else:
            for off in HALF_FIELDS[qtype]:
                d = rng.uniform(-0.05, 0.05, size=n // block).astype(np.float16)
                blocks[:, off:off + 2] = d.view(np.uint8).reshape(-1, 2)
        raw = blocks
    raw = np.ascontiguousarray(raw).reshape(-1)
    return raw, reference_dequantize(qtype, raw)


def q8_k_dequantize(raw):
    """gguf-py has no Q8_K: float32 d, then 256 int8 quants (then 16 int16 block sums)."""
    blocks = raw.reshape(-1, 292)
    d = blocks[:, :4].copy().view(np.float32)
    qs = blocks[:, 4:260].view(np.int8).astype(np.float32)
    return (d * qs).reshape(-1)


def q8_1_blocks(raw):
    """ggml's Q8_1 (36 bytes: fp16 d, fp16 s = d * sum(q), 32 int8): (d, s, q) per block.
    gguf-py still describes an older 40-byte layout, so it is decoded here."""
    b = np.asarray(raw, np.uint8).reshape(-1, 36)
    d = b[:, 0:2].copy().view(np.float16).astype(np.float32).reshape(-1, 1)
    s = b[:, 2:4].copy().view(np.float16).astype(np.float32).reshape(-1)
    return d, s, b[:, 4:].copy().view(np.int8)


def reference_dequantize(qtype, raw):
    if qtype == T.Q8_K:
        return q8_k_dequantize(raw)
    if qtype == T.Q8_1:
        d, _, q = q8_1_blocks(raw)
        return (q.astype(np.float32) * d).reshape(-1)
    return np.asarray(gguf.quants.dequantize(raw, qtype), dtype=np.float32).reshape(-1)


def q8_k_quantize(x):
    """ggml's Q8_K activations: the first largest-magnitude value maps to -127, the rest round to
    nearest even and clamp at 127; d = 1 / scale; bsums are sums of 16 quants."""
    out = []
    for blk in x.reshape(-1, 256):
        i = int(np.argmax(np.abs(blk)))
        if blk[i] == 0:
            out.append(np.zeros(292, dtype=np.uint8))
            continue
        iscale = np.float32(-127.0) / blk[i]
        q = np.minimum(np.rint(iscale * blk), 127).astype(np.int8)
        bsums = q.reshape(16, 16).astype(np.int16).sum(axis=1).astype(np.int16)
        d = np.float32(1.0) / iscale
        out.append(np.concatenate([np.array([d], np.float32).view(np.uint8), q.view(np.uint8), bsums.view(np.uint8)]))
    return np.concatenate(out)


def activation_dequantize(qtype, y, isa="best"):
    """y as the matmul sees it in q8 mode: quantized to the type's vec_dot_type and decoded."""
    act = _core.type_info(int(qtype))["vec_dot_type"]
    if act == int(T.F32):
        return y
    return reference_dequantize(T(act), _core.quantize(act, y, isa=isa))


# --- the table -----------------------------------------------------------------------------------

def test_table_matches_gguf_layouts():
    ids = _core.type_ids()
    for qtype, (block, size) in GGML_QUANT_SIZES.items():
        if int(qtype) >= 40:
            continue  # newer than tova's table (ids >= kGgmlTypeLimit)
        assert int(qtype) in ids, qtype.name
        info = _core.type_info(int(qtype))
        assert info["name"] == qtype.name
        assert info["block_size"] == block, qtype.name
        if qtype == T.Q8_1:
            # gguf-py still lists the old Q8_1 with float32 d and s (40 bytes); ggml's block is
            # two fp16 (d, s = d * sum) and 32 int8 quants = 36 bytes. Never stored in models.
            assert info["type_size"] == 36
        else:
            assert info["type_size"] == size, qtype.name
        assert info["is_quantized"] == (block > 1)


def test_supported_types():
    for qtype in COMPUTED:
        assert _core.type_info(int(qtype))["supported"], qtype.name
    for qtype in (T.IQ2_XXS, T.IQ4_XS, T.TQ1_0, T.MXFP4):
        assert not _core.type_info(int(qtype))["supported"], qtype.name
    assert TIERS[0] == "scalar" and _core.kernel_isa() in TIERS


# --- dequantize ------------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", COMPUTED, ids=lambda t: t.name)
def test_dequantize_equals_gguf(qtype):
    rng = np.random.default_rng(int(qtype))
    raw, ref = random_row(qtype, rng)
    for isa in ISAS:
        got = _core.dequantize(int(qtype), raw, N, isa=isa)
        assert got.dtype == np.float32 and got.shape == (N,)
        assert np.array_equal(got, ref), (qtype.name, isa)


def test_dequantize_f16_all_bit_patterns():
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    with np.errstate(invalid="ignore"):
        ref = bits.view(np.float16).astype(np.float32).view(np.uint32)
    # Infinities and NaNs keep their payload, signalling ones too (numpy's cast on AArch64 uses the
    # hardware conversion, which sets the quiet bit): built from the bits.
    b = bits.astype(np.uint32)
    special = (b & 0x7C00) == 0x7C00
    ref = np.where(special, ((b & 0x8000) << 16) | 0x7F800000 | ((b & 0x03FF) << 13), ref)
    got = _core.dequantize(int(T.F16), bits.view(np.uint8), 65536).view(np.uint32)
    assert np.array_equal(got, ref)  # bitwise, so NaN payloads, -0 and subnormals count too


def test_dequantize_odd_offset_view():
    rng = np.random.default_rng(3)
    raw, ref = random_row(T.Q4_K, rng, 512)
    padded = np.concatenate([np.zeros(1, np.uint8), raw])
    assert np.array_equal(_core.dequantize(int(T.Q4_K), padded[1:], 512), ref)


# --- quantize ---------------------------------------------------------------------------------------

def tie_heavy_values(rng, n=N):
    """Normal values, plus blocks where x * (127 / amax) lands exactly on .5 (rounding-mode
    ties) and an all-zero block."""
    x = rng.standard_normal(n).astype(np.float32)
    x[:32] = np.arange(32, dtype=np.float32) + 0.5
    x[31] = 127.0  # amax 127: d = 1, so every other value is an exact tie
    x[32:64] = -x[:32]
    x[64:96] = 0.0
    return x


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.BF16], ids=lambda t: t.name)
def test_quantize_equals_gguf(qtype):
    x = tie_heavy_values(np.random.default_rng(7))
    ref = gguf.quants.quantize(x, qtype).view(np.uint8).reshape(-1)
    for isa in ISAS:
        assert np.array_equal(_core.quantize(int(qtype), x, isa=isa), ref), (qtype.name, isa)


def test_quantize_q8_k_matches_ggml_rule():
    x = tie_heavy_values(np.random.default_rng(8))
    x[256:512] *= 1e-3
    x[512] = -50.0  # largest magnitude negative: the scale's sign flips
    x[768:1024] = 0.0
    ref = q8_k_quantize(x)
    for isa in ISAS:
        assert np.array_equal(_core.quantize(int(T.Q8_K), x, isa=isa), ref), isa


def test_quantize_f16_bf16_bit_patterns():
    rng = np.random.default_rng(9)
    f = rng.integers(0, 2**32, size=1 << 18, dtype=np.uint32).view(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        ref16 = f.astype(np.float16)
    nan = np.isnan(f)
    for isa in ISAS:
        got = _core.quantize(int(T.F16), f, isa=isa).view(np.float16)
        # numpy keeps signalling NaNs signalling, the F16C instruction quiets them: NaN either way.
        assert np.array_equal(got[~nan].view(np.uint16), ref16[~nan].view(np.uint16)), isa
        assert np.isnan(got[nan]).all()
    # Every exact midpoint between neighbouring finite halves (subnormals included): the ties
    # that round-to-nearest-even must break towards the even neighbour.
    halves = np.arange(0x7BFF, dtype=np.uint16).view(np.float16).astype(np.float32)
    nxt = np.arange(1, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float32)
    mid = np.concatenate([(halves + nxt) / 2, -(halves + nxt) / 2]).astype(np.float32)
    for isa in ISAS:
        got = _core.quantize(int(T.F16), mid, isa=isa).view(np.uint16)
        assert np.array_equal(got, mid.astype(np.float16).view(np.uint16)), isa
    ref_bf16 = gguf.quants.quantize(f, T.BF16).view(np.uint8).reshape(-1)
    assert np.array_equal(_core.quantize(int(T.BF16), f), ref_bf16)


# --- vec_dot -----------------------------------------------------------------------------------------

def float_dot_tolerance(x, y):
    # float32 accumulation of n products: each rounding is <= 2^-24 of a partial sum, and the
    # kernels sum in blocks / 8 lanes, so errors random-walk to ~sqrt(n) * 6e-8 ~ 3e-6 of
    # sum|x*y| for n = 2048; 1e-5 leaves a 3x margin while catching any wrong element.
    return 1e-5 * float(np.sum(np.abs(x.astype(np.float64) * y))) + 1e-30


def q8_rounding_bound(qtype, x, y):
    """Worst-case error of replacing y by its 8-bit quantization, for the q8 mode.

    Each activation block of B values is stored as d * q with d = amax / 127, so
    |y_i - d q_i| <= d / 2. For Q8_0, d is then rounded to fp16 (relative error <= 2^-11,
    times |q| <= 127: another 0.062 d). So |x . y - x . y_q| <= sum_i |x_i| * 0.57 * d_block(i).
    """
    act = _core.type_info(int(qtype))["vec_dot_type"]
    if act == int(T.F32):
        return 0.0
    block = 32 if act in (int(T.Q8_0), int(T.Q8_1)) else 256
    d = np.abs(y.reshape(-1, block)).max(axis=1, keepdims=True) / 127.0
    return float(np.sum(np.abs(x.reshape(-1, block)) * 0.57 * d))


@pytest.mark.parametrize("qtype", COMPUTED, ids=lambda t: t.name)
def test_vec_dot_f32_mode(qtype):
    rng = np.random.default_rng(100 + int(qtype))
    raw, xf = random_row(qtype, rng)
    y = rng.standard_normal(N).astype(np.float32)
    ref = float(np.dot(xf.astype(np.float64), y.astype(np.float64)))
    tol = float_dot_tolerance(xf, y)
    for isa in ISAS:
        got = _core.vec_dot(int(qtype), raw, y, mode="f32", isa=isa)
        assert abs(got - ref) <= tol, (qtype.name, isa, got, ref, tol)


@pytest.mark.parametrize("qtype", COMPUTED, ids=lambda t: t.name)
def test_vec_dot_q8_mode(qtype):
    rng = np.random.default_rng(200 + int(qtype))
    raw, xf = random_row(qtype, rng)
    y = rng.standard_normal(N).astype(np.float32)
    exact = float(np.dot(xf.astype(np.float64), y.astype(np.float64)))
    bound = q8_rounding_bound(qtype, xf, y) + float_dot_tolerance(xf, y)
    for isa in ISAS:
        got = _core.vec_dot(int(qtype), raw, y, mode="q8", isa=isa)
        # Against the true dot product: off by no more than the 8-bit rounding of y allows.
        assert abs(got - exact) <= bound, (qtype.name, isa, got, exact, bound)
        # Against the dot with the quantized activations themselves: only float rounding left,
        # so the integer paths (offsets, minima, block sums) are checked to full precision.
        yq = activation_dequantize(qtype, y, isa)
        ref = float(np.dot(xf.astype(np.float64), yq.astype(np.float64)))
        tol = float_dot_tolerance(xf, yq) + q8_1_sum_rounding_bound(qtype, raw, y, isa)
        assert abs(got - ref) <= tol, (qtype.name, isa, got, ref, tol)


def q8_1_sum_rounding_bound(qtype, raw, y, isa):
    """Q4_1 / Q5_1 take the minimum term m_x * s_y from the Q8_1 block, where s_y = d * sum(q)
    is stored in fp16: off by at most 2^-11 * |s_y| per block (the integer paths stay exact)."""
    if qtype not in (T.Q4_1, T.Q5_1):
        return 0.0
    size = 20 if qtype == T.Q4_1 else 24
    m = np.asarray(raw, np.uint8).reshape(-1, size)[:, 2:4].copy().view(np.float16).astype(np.float64)
    _, s, _ = q8_1_blocks(_core.quantize(int(T.Q8_1), y, isa=isa))
    return float(np.sum(np.abs(m.reshape(-1) * s)) * 2.0 ** -11)


def test_q8_1_activations_carry_their_sum():
    rng = np.random.default_rng(7)
    y = (rng.standard_normal(N) * 3).astype(np.float32)
    for isa in ISAS:
        d, s, q = q8_1_blocks(_core.quantize(int(T.Q8_1), y, isa=isa))
        d32 = np.abs(y.reshape(-1, 32)).max(axis=1) / np.float32(127.0)  # d before fp16 rounding
        want = (d32 * q.astype(np.int32).sum(axis=1).astype(np.float32)).astype(np.float16)
        assert np.array_equal(s.astype(np.float16), want), isa
        # the quants are Q8_0's
        q8_0 = np.asarray(_core.quantize(int(T.Q8_0), y, isa=isa), np.uint8).reshape(-1, 34)
        assert np.array_equal(q8_0[:, 2:].view(np.int8), q), isa
    assert _core.type_info(int(T.Q4_1))["vec_dot_type"] == int(T.Q8_1)
    assert _core.type_info(int(T.Q5_1))["vec_dot_type"] == int(T.Q8_1)


@pytest.mark.parametrize("qtype", COMPUTED, ids=lambda t: t.name)
def test_vec_dot_scalar_equals_simd(qtype):
    rng = np.random.default_rng(300 + int(qtype))
    for n in (N, 8 * 256 + 256, 256 + 32):  # also odd numbers of blocks (unrolled loops' tails)
        if n % GGML_QUANT_SIZES[qtype][0]:
            continue
        raw, xf = random_row(qtype, rng, n)
        y = rng.standard_normal(n).astype(np.float32)
        for mode in ("q8", "f32"):
            a = _core.vec_dot(int(qtype), raw, y, mode=mode, isa="scalar")
            for isa in SIMD_TIERS:
                b = _core.vec_dot(int(qtype), raw, y, mode=mode, isa=isa)
                # Same integer sums, different float summation order: reassociation tolerance.
                assert abs(a - b) <= float_dot_tolerance(xf, y), (qtype.name, mode, n, isa, a, b)


@pytest.mark.parametrize("qtype", COMPUTED, ids=lambda t: t.name)
@pytest.mark.parametrize("isa", TIERS)
def test_gemm_equals_vec_dot(qtype, isa):
    """The matrix product kernels (tiles of weight rows times activation rows) give every
    pair's vec_dot result bit for bit: same integer sums, same float operations, whatever the
    pair's place in the tile. So a sequence decoded alone (one row) equals the same sequence in
    a batch. Row counts cover full tiles, remainders and single rows."""
    rng = np.random.default_rng(400 + int(qtype))
    block = GGML_QUANT_SIZES[qtype][0]
    for n in (N, 8 * 256 + 256, 256 + 32):
        if n % block:
            continue
        for m in (1, 3, 5):
            raw = np.concatenate([random_row(qtype, rng, n)[0] for _ in range(m)])
            for rows in (1, 2, 4, 5, 9, 17):
                y = rng.standard_normal((rows, n)).astype(np.float32)
                got = _core._gemm(int(qtype), raw, m, y, isa=isa)
                assert got.shape == (rows, m, 2)
                assert np.array_equal(got[..., 0], got[..., 1]), (qtype.name, isa, n, m, rows)


def test_vec_dot_extreme_quants():
    # Saturation corners of the SIMD paths: a Q8_0 weight of -128 (legal in the format) and
    # activations at +-127 everywhere.
    x = np.zeros(34 * 2, np.uint8)
    x[0:2] = np.array([1.0], np.float16).view(np.uint8)
    x[2:34] = np.full(32, -128, np.int8).view(np.uint8)
    x[34:36] = np.array([0.5], np.float16).view(np.uint8)
    x[36:68] = np.full(32, 127, np.int8).view(np.uint8)
    y = np.concatenate([np.full(32, -3.0), np.full(32, 3.0)]).astype(np.float32)
    dy = float(np.float16(np.float32(3.0) / np.float32(127.0)))  # y quantizes to +-127 * dy
    expected = 32 * (-128.0 * -127 * dy) + 32 * (0.5 * 127 * 127 * dy)
    for isa in ISAS:
        # Integer sums are exact; only a few float roundings of the block scales remain.
        assert _core.vec_dot(int(T.Q8_0), x, y, isa=isa) == pytest.approx(expected, rel=1e-6)


# --- gated activations of the feed-forward block ---------------------------------------------------

@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
def test_gated_activations(act):
    """The feed-forward activations (a polynomial exp in the SIMD tiers) against float64 numpy:
    within a few float ulps, over the whole float range (saturation, overflow of e^-z, tails)."""
    rng = np.random.default_rng(7)
    for n in (1, 7, 8, 9, 1000, 1027):
        g = (rng.standard_normal(n) * rng.choice([0.01, 1.0, 10.0, 100.0], size=n)).astype(np.float32)
        g[: min(n, 4)] = np.array([0.0, -0.0, 200.0, -200.0], np.float32)[: min(n, 4)]
        up = rng.standard_normal(n).astype(np.float32)
        got = _core._act_mul(act, g, up)
        x = g.astype(np.float64)
        with np.errstate(over="ignore"):  # e^z = inf is the right limit (x / inf = 0)
            want = reference_act(act, x) * up
        # atol: the scalar tier's float tanh rounds 1 + tanh(u) to 0 below u ~ -9
        assert np.allclose(got, want, rtol=4e-6, atol=1e-6 * np.abs(up).max()), (act, n, np.max(np.abs(got - want)))
    with pytest.raises(ValueError, match="act"):
        _core._act_mul("relu", g, up)


def reference_act(act, x):
    if act == "silu":
        return x / (1.0 + np.exp(-x))
    # 0.5 x (1 + tanh(u)) = x sigmoid(2u), the form without cancellation for u << 0
    return x / (1.0 + np.exp(-2.0 * np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


# --- float helpers for attention -------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 5, 8, 9, 17, 513])
def test_softmax(n):
    """Attention's softmax (polynomial exp in the SIMD tiers) against float64, wide score ranges
    included (scores far below the maximum underflow to 0)."""
    rng = np.random.default_rng(n)
    for spread in (0.1, 10.0, 200.0):
        x = (rng.standard_normal(n) * spread).astype(np.float32)
        got = _core._softmax(x)
        e = np.exp(x.astype(np.float64) - x.max())
        want = e / e.sum()
        assert abs(float(got.sum()) - 1.0) < 1e-5
        assert np.allclose(got, want, rtol=1e-5, atol=1e-7), (n, spread, np.max(np.abs(got - want)))

@pytest.mark.parametrize("d", [8, 20, 64, 96, 128, 256])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 40])
def test_gathered_attention_helpers(d, n):
    """Scores and value sums over KV rows picked by index (the attention inner loops): equal
    to float64 numpy within float32 reassociation, for head sizes with and without an 8- or
    32-element tail and row counts around the 8-row step."""
    rng = np.random.default_rng(d * 100 + n)
    table = rng.standard_normal((50, d)).astype(np.float32)
    half = table.astype(np.float16)
    idx = rng.permutation(50)[:n].astype(np.int32)
    q = rng.standard_normal(d).astype(np.float32)
    p = rng.random(n).astype(np.float32)
    y = rng.standard_normal(d).astype(np.float32)
    empty32, empty16 = np.zeros((1, 1), np.float32), np.zeros((1, 1), np.uint16)
    for f16, rows in ((False, table), (True, half.astype(np.float32))):
        want = 0.125 * (rows[idx].astype(np.float64) @ q)
        got = _core._gather_dot(empty32 if f16 else table, half.view(np.uint16) if f16 else empty16,
                                idx, q, 0.125, f16)
        tol = [0.125 * float_dot_tolerance(rows[i], q) for i in idx]
        assert np.all(np.abs(got - want) <= tol), (f16, got - want)
        want_v = y + p.astype(np.float64) @ rows[idx].astype(np.float64)
        got_v = _core._gather_axpy(empty32 if f16 else table, half.view(np.uint16) if f16 else empty16,
                                   idx, p, y, f16)
        np.testing.assert_allclose(got_v, want_v, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        _core._gather_dot(table, empty16, np.array([50], np.int32), q, 1.0, False)


@pytest.mark.parametrize("d", [8, 20, 64, 96, 256])
@pytest.mark.parametrize("n", [0, 1, 4, 7, 8, 12, 17, 40])
@pytest.mark.parametrize("nh", [1, 2, 3, 4, 6, 7])
def test_gathered_attention_for_query_heads_sharing_rows(d, n, nh):
    """The GQA versions (each row read once for a group of query heads) give every head the
    bits of the one-head helpers: the attention picks either per task, and a sequence decoded
    alone (few tasks) must equal it decoded in a batch."""
    rng = np.random.default_rng(d * 1000 + n * 10 + nh)
    table = rng.standard_normal((50, d)).astype(np.float32)
    half = table.astype(np.float16).view(np.uint16)
    idx = rng.permutation(50)[:n].astype(np.int32)
    q = rng.standard_normal((nh, d)).astype(np.float32)
    p = rng.random((nh, n)).astype(np.float32)
    y = rng.standard_normal((nh, d)).astype(np.float32)
    empty32, empty16 = np.zeros((1, 1), np.float32), np.zeros((1, 1), np.uint16)
    for f16 in (False, True):
        r32, r16 = (empty32, half) if f16 else (table, empty16)
        got = _core._gather_dot_heads(r32, r16, idx, q, 0.125, f16).reshape(nh, n)
        got_v = _core._gather_axpy_heads(r32, r16, idx, p, y, f16).reshape(nh, d)
        for h in range(nh):
            assert np.array_equal(got[h], _core._gather_dot(r32, r16, idx, q[h], 0.125, f16)), (f16, h)
            assert np.array_equal(got_v[h], _core._gather_axpy(r32, r16, idx, p[h], y[h], f16)), (f16, h)


@pytest.mark.parametrize("n", [1, 7, 8, 31, 33, 100, 1000])
def test_float_helpers(n):
    rng = np.random.default_rng(n)
    a = rng.standard_normal(n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    h = rng.standard_normal(n).astype(np.float16)
    tol = float_dot_tolerance(a, b)
    assert abs(_core._dot_f32(a, b) - float(np.dot(a.astype(np.float64), b))) <= tol
    hf = h.astype(np.float32)
    assert abs(_core._dot_f16_f32(h.view(np.uint16), b) - float(np.dot(hf.astype(np.float64), b))) <= \
        float_dot_tolerance(hf, b)
    # axpy: one fused or separate multiply-add per element, within 1 ulp-ish of float64.
    np.testing.assert_allclose(_core._axpy_f32(0.75, a, b), b + 0.75 * a.astype(np.float64), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_core._axpy_f16(-1.5, h.view(np.uint16), b), b - 1.5 * hf.astype(np.float64),
                               rtol=1e-6, atol=1e-6)


# --- bad input -------------------------------------------------------------------------------------------

def test_bad_inputs_raise_value_error():
    raw, _ = random_row(T.Q4_0, np.random.default_rng(1), 64)
    y = np.zeros(64, np.float32)
    with pytest.raises(ValueError, match="bytes"):
        _core.dequantize(int(T.Q4_0), raw[:-1], 64)  # one byte short
    with pytest.raises(ValueError, match="multiple"):
        _core.dequantize(int(T.Q4_0), raw, 63)
    with pytest.raises(ValueError, match="unknown"):
        _core.dequantize(4, raw, 64)  # ids 4 and 5 were removed from ggml
    with pytest.raises(ValueError, match="unknown"):
        _core.type_info(99)
    with pytest.raises(ValueError, match="IQ2_XXS"):
        _core.dequantize(int(T.IQ2_XXS), np.zeros(66, np.uint8), 256)
    with pytest.raises(ValueError, match="IQ2_XXS"):
        _core.vec_dot(int(T.IQ2_XXS), np.zeros(66, np.uint8), np.zeros(256, np.float32))
    with pytest.raises(ValueError, match="y has"):
        _core.vec_dot(int(T.Q4_0), raw, y[:32])
    with pytest.raises(ValueError, match="whole number"):
        _core.vec_dot(int(T.Q4_0), raw[:-2], y)
    with pytest.raises(ValueError, match="mode"):
        _core.vec_dot(int(T.Q4_0), raw, y, mode="q4")
    with pytest.raises(ValueError, match="isa"):
        _core.vec_dot(int(T.Q4_0), raw, y, isa="avx9")
    with pytest.raises(ValueError, match="multiple"):
        _core.quantize(int(T.Q8_0), np.zeros(33, np.float32))
    with pytest.raises(ValueError, match="cannot write"):
        _core.quantize(int(T.Q4_K), np.zeros(256, np.float32))
