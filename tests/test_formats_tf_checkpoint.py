"""TF checkpoint reader (no TensorFlow needed): fixtures, corruption, codecs; TF parity where installed."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segconvert.errors import CheckpointError
from segconvert.formats import tf_checkpoint as tfc
from segconvert.formats._tf_table import (
    TABLE_MAGIC,
    Corrupt,
    crc32c,
    crc32c_numpy,
    decode_slice_key,
    mask_crc,
    snappy_decompress,
    unmask_crc,
)
from segconvert.formats.protowire import encode_varint
from segconvert.testing import fixture_path

CASES = [
    ("slim_resnet_v1_50_os8", "resnet_v1_50.ckpt"),
    ("slim_resnet_v1_101_os16", "resnet_v1_101.ckpt"),
    ("pspnet_slim_psp_head", None),
]
CASE_IDS = [c for c, _ in CASES]


def _case(case: str) -> tuple[Path, dict]:
    d = fixture_path("tf", case)
    return d, json.loads((d / "meta.json").read_text())


def _variables(meta: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    return {v["name"]: (tuple(v["shape"]), v["dtype"]) for v in meta["variables"]}


# ------------------------------------------------------------------------------------------------------
# independent reference implementations used by the tests
# ------------------------------------------------------------------------------------------------------


def _crc32c_bitwise(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _snappy_compress(data: bytes) -> bytes:
    """Greedy snappy encoder (literals + 2-byte-offset copies), enough to produce valid streams."""
    out = bytearray(encode_varint(len(data)))
    last: dict[bytes, int] = {}
    i = lit = 0

    def flush(end: int) -> None:
        n = end - lit
        if n:
            if n <= 60:
                out.append((n - 1) << 2)
            else:
                out.append(61 << 2)
                out.extend((n - 1).to_bytes(2, "little"))
            out.extend(data[lit:end])

    while i + 4 <= len(data):
        key = data[i : i + 4]
        j = last.get(key)
        last[key] = i
        if j is not None and 0 < i - j < 65536:
            flush(i)
            ln = 4
            while i + ln < len(data) and ln < 64 and data[j + ln] == data[i + ln]:
                ln += 1
            out.append(((ln - 1) << 2) | 2)
            out.extend((i - j).to_bytes(2, "little"))
            i += ln
            lit = i
        else:
            i += 1
    flush(len(data))
    return bytes(out)


def _write_table(entries: list[tuple[bytes, bytes]], block_size: int = 4096, compress: bool = False) -> bytes:
    """Minimal LevelDB-format table writer (restart interval 16, optional snappy) for test inputs."""
    out = bytearray()

    def emit(contents: bytes) -> tuple[int, int]:
        ctype = 0
        if compress:
            c = _snappy_compress(contents)
            if len(c) < len(contents):
                contents, ctype = c, 1
        off = len(out)
        out.extend(contents)
        trailer = bytes([ctype])
        out.extend(trailer + struct.pack("<I", mask_crc(_crc32c_bitwise(contents + trailer))))
        return off, len(contents)

    def build(items: list[tuple[bytes, bytes]]) -> bytes:
        buf, restarts, prev = bytearray(), [], b""
        for i, (k, v) in enumerate(items):
            shared = 0
            if i % 16:
                while shared < min(len(k), len(prev)) and k[shared] == prev[shared]:
                    shared += 1
            else:
                restarts.append(len(buf))
            buf += encode_varint(shared) + encode_varint(len(k) - shared) + encode_varint(len(v)) + k[shared:] + v
            prev = k
        for r in restarts or [0]:
            buf += struct.pack("<I", r)
        return bytes(buf + struct.pack("<I", len(restarts or [0])))

    index, cur = [], []
    for k, v in entries:
        cur.append((k, v))
        if sum(len(a) + len(b) for a, b in cur) >= block_size:
            index.append((cur[-1][0], emit(build(cur))))
            cur = []
    if cur:
        index.append((cur[-1][0], emit(build(cur))))
    meta = emit(build([]))
    idx = emit(build([(k, encode_varint(o) + encode_varint(s)) for k, (o, s) in index]))
    footer = encode_varint(meta[0]) + encode_varint(meta[1]) + encode_varint(idx[0]) + encode_varint(idx[1])
    out.extend(footer.ljust(40, b"\0") + struct.pack("<Q", TABLE_MAGIC))
    return bytes(out)


def _table_items(path: Path) -> list[tuple[bytes, bytes]]:
    from segconvert.formats._tf_table import Table

    buf = path.read_bytes()
    t = Table(buf)
    items = []
    for e in t.entries():
        vb, s, end = t.value(e)
        items.append((e.key, bytes(vb[s:end])))
    return items


def _oc_encode(name: str, ext: list[tuple[int, int]]) -> bytes:
    """OrderedCode EncodeTensorNameSlice, written from the format description."""
    out = bytearray(b"\x00")  # WriteNumIncreasing(0)
    for c in name.encode():
        out += {0x00: b"\x00\xff", 0xFF: b"\xff\x00"}.get(c, bytes([c]))
    out += b"\x00\x01"
    out += bytes([1, len(ext)]) if ext else b"\x00"
    header = [(0, 0), (0x80, 0), (0xC0, 0), (0xE0, 0), (0xF0, 0), (0xF8, 0), (0xFC, 0), (0xFE, 0)]
    header += [(0xFF, 0), (0xFF, 0x80), (0xFF, 0xC0)]
    for v in (x for pair in ext for x in pair):
        mag = ~v if v < 0 else v
        length = next(n for n in range(1, 11) if mag < 1 << (7 * n - 1)) if mag else 1
        b = bytearray(v.to_bytes(10, "big", signed=True)[10 - length :])
        b[0] ^= header[length][0]
        if length > 1:
            b[1] ^= header[length][1]
        out += b
    return bytes(out)


# ------------------------------------------------------------------------------------------------------
# codecs
# ------------------------------------------------------------------------------------------------------


@pytest.fixture(params=["hardware", "numpy"])
def crc(request):
    """Both CRC32C implementations: google-crc32c's C one (a dependency) and the pure-numpy fallback."""
    if request.param == "numpy":
        return crc32c_numpy
    from segconvert.formats import _tf_table

    if _tf_table._HW is None:
        pytest.skip("google-crc32c's C extension is not installed")
    return crc32c


def test_crc32c_known_vectors(crc):
    # RFC 3720 (iSCSI) appendix B.4 and the classic check value
    assert crc(b"123456789") == 0xE3069283
    assert crc(bytes(32)) == 0x8A9136AA
    assert crc(b"\xff" * 32) == 0x62A8AB43
    assert crc(bytes(range(32))) == 0x46DD794E
    assert crc(bytes(range(31, -1, -1))) == 0x113FDB5C


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 2047, 2048, 4099, 16 * 64 * 3 + 5, 70001, (1 << 19) + 33])
def test_crc32c_matches_bitwise_reference(n, crc):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    ref = _crc32c_bitwise(data)
    assert crc(data) == ref
    k = n // 3
    assert crc(data[k:], crc(data[:k])) == ref  # extension


def test_crc32c_multi_block_extension(crc):
    data = np.random.default_rng(7).integers(0, 256, (1 << 20) + 1000, dtype=np.uint8)
    whole = crc(data)
    assert crc(data[12345:], crc(data[:12345])) == whole
    assert crc(data[:-1]) != whole


def _crc32c_bytewise(data: bytes, crc: int = 0) -> int:
    """Sarwate's one-table-lookup-per-byte CRC, table built here from the polynomial (fast enough for MBs)."""
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    reg = crc ^ 0xFFFFFFFF
    for b in data:
        reg = table[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg ^ 0xFFFFFFFF


def test_crc32c_bytewise_reference_is_the_bitwise_one():
    data = np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    assert _crc32c_bytewise(data) == _crc32c_bitwise(data)
    assert _crc32c_bytewise(data[100:], _crc32c_bytewise(data[:100])) == _crc32c_bitwise(data)


ROW = 1 << 16  # bytes per row of a big block (16 rows = 1 MiB)


@pytest.mark.parametrize(
    "n",
    [
        6 * ROW,  # a partial big block of 6 rows (10 leading zero rows skipped)
        12 * ROW + 64 + 3,  # a small head, then one partial block split between two threads
        16 * ROW,  # one whole block, its rows split between two threads
        33 * ROW + 5 * 64 + 7,  # small head (1 row + 5 chunks), two blocks on two threads, a 7-byte tail
        40 * ROW + 100,  # a partial block of 8 rows and two whole blocks
    ],
)
def test_crc32c_big_block_paths_match_bytewise_reference(n, crc):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8)
    raw = data.tobytes()
    ref = _crc32c_bytewise(raw)
    assert crc(data) == ref == crc(raw) == crc(memoryview(raw))
    k = 3 * ROW + 17
    assert crc(data[k:], crc(data[:k])) == ref  # a non-zero start register on a big buffer
    bad = data.copy()
    bad[n // 2] ^= 0x10
    assert crc(bad) != ref


def _crc_in_child(data, queue):
    queue.put(crc32c_numpy(data))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_crc32c_after_fork():
    """The helper thread is per process: a forked child that verifies does not wait on the parent's."""
    import multiprocessing

    data = np.random.default_rng(2).integers(0, 256, 3 * (1 << 20), dtype=np.uint8)
    want = crc32c_numpy(data)  # starts the parent's helper thread
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_crc_in_child, args=(data, queue), daemon=True)
    child.start()
    child.join(60)
    assert child.exitcode == 0 and queue.get(timeout=5) == want


def test_crc_mask_roundtrip():
    for c in (0, 1, 0xE3069283, 0xFFFFFFFF):
        assert unmask_crc(mask_crc(c)) == c
        assert mask_crc(c) != c


def test_snappy_hand_made_stream():
    # "abcd" literal, then an overlapping copy of length 8 at offset 4, then a 2-byte-offset copy
    stream = (
        encode_varint(16) + bytes([3 << 2]) + b"abcd" + bytes([((8 - 4) << 2) | 1, 4]) + bytes([(4 - 1) << 2 | 2, 8, 0])
    )
    assert snappy_decompress(stream) == b"abcd" + b"abcdabcd" + b"abcd"


@given(st.binary(max_size=3000), st.integers(0, 20))
@settings(max_examples=60, deadline=None)
def test_snappy_roundtrip(data, rep):
    data = data + data[:50] * rep
    assert snappy_decompress(_snappy_compress(data)) == data


@given(st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_snappy_garbage_raises_corrupt_only(data):
    try:
        snappy_decompress(data)
    except Corrupt:
        pass


def test_snappy_rejects_bombs():
    with pytest.raises(Corrupt, match="claims"):
        snappy_decompress(encode_varint(1 << 40) + b"\x00a")
    with pytest.raises(Corrupt, match="offset"):
        snappy_decompress(encode_varint(8) + bytes([(4 - 1) << 2 | 2, 9, 0]))


@given(
    st.text(min_size=1, max_size=30),
    st.lists(st.tuples(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**63), 2**63 - 1)), max_size=5),
)
@settings(max_examples=200, deadline=None)
def test_ordered_code_slice_keys_roundtrip(name, ext):
    assert decode_slice_key(_oc_encode(name, ext)) == (name, tuple(ext))


# ------------------------------------------------------------------------------------------------------
# fixtures, without TensorFlow
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case,v1", CASES, ids=CASE_IDS)
def test_fixture_v2_lists_meta_variables(case, v1):
    d, meta = _case(case)
    want = _variables(meta)
    for arg in (d / "model.ckpt", d / "model.ckpt.index", d / "model.ckpt.data-00000-of-00001"):
        with tfc.open_checkpoint(arg) as ck:
            assert ck.format == "V2"
            assert {n: (s, dt) for n, s, dt, _ in ck.entries()} == want
            assert list(ck.keys()) == sorted(want)
    desc = tfc.describe(d / "model.ckpt")
    assert {x["name"]: (tuple(x["shape"]), x["dtype"]) for x in desc} == want
    assert all(x["nbytes"] == int(np.prod(x["shape"])) * (8 if x["dtype"] == "int64" else 4) for x in desc)


@pytest.mark.parametrize("case,v1", [c for c in CASES if c[1]], ids=[c for c, v in CASES if v])
def test_fixture_v1_equals_v2_bit_for_bit(case, v1):
    d, meta = _case(case)
    scope = meta["scope"]
    with tfc.open_checkpoint(d / "model.ckpt") as v2, tfc.open_checkpoint(d / v1) as old:
        assert old.format == "V1"
        assert {n: (s, dt) for n, s, dt, _ in old.entries()} == _variables(meta)
        for name in v2:
            a, b = v2[name], old[name]
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), name
        assert old["global_step"].dtype == np.int64 and int(old["global_step"]) == 0
        np.testing.assert_array_equal(old[f"{scope}/mean_rgb"], np.array([123.68, 116.78, 103.94], np.float32))
        w = old[f"{scope}/conv1/weights"]
        assert w.shape == (7, 7, 3, 64) and not w.flags.owndata and not w.flags.writeable  # a view of the map


def test_fixture_bn_values_are_plausible():
    d, _ = _case("slim_resnet_v1_50_os8")
    with tfc.open_checkpoint(d / "model.ckpt") as ck:
        var = ck["resnet_v1_50/block1/unit_1/bottleneck_v1/conv1/BatchNorm/moving_variance"]
        gamma = ck["resnet_v1_50/block1/unit_1/bottleneck_v1/conv1/BatchNorm/gamma"]
    # the README's initialisation: variance and gamma U(0.5, 1.5)
    assert var.min() >= 0.5 and var.max() <= 1.5 and gamma.min() >= 0.5 and gamma.max() <= 1.5


def test_directory_with_state_file(tmp_path):
    d, _ = _case("pspnet_slim_psp_head")
    for f in ("model.ckpt.index", "model.ckpt.data-00000-of-00001"):
        shutil.copy(d / f, tmp_path / f)
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "model.ckpt"\n')
    with tfc.open_checkpoint(tmp_path) as ck:
        assert ck.format == "V2" and len(ck) == 292


def test_missing_and_bad_paths(tmp_path):
    with pytest.raises(CheckpointError, match="no TF checkpoint"):
        tfc.open_checkpoint(tmp_path / "nope")
    (tmp_path / "x.ckpt").write_bytes(b"not a checkpoint at all, just text" * 3)
    with pytest.raises(CheckpointError, match="magic"):
        tfc.open_checkpoint(tmp_path / "x.ckpt")
    d, _ = _case("pspnet_slim_psp_head")
    shutil.copy(d / "model.ckpt.index", tmp_path / "m.index")
    with pytest.raises(CheckpointError, match="data shard m.data-00000-of-00001 is missing"):
        tfc.open_checkpoint(tmp_path / "m")


def _copy_case(case: str, dst: Path) -> Path:
    d, _ = _case(case)
    for f in d.iterdir():
        if "ckpt" in f.name:
            shutil.copy(f, dst / f.name)
    return dst


def test_bit_flip_in_data_is_reported_with_key_and_offset(tmp_path):
    _copy_case("slim_resnet_v1_50_os8", tmp_path)
    name = "resnet_v1_50/block2/unit_1/bottleneck_v1/conv2/weights"
    with tfc.open_checkpoint(tmp_path / "model.ckpt") as ck:
        off = ck._tensors[name].offset
    data = tmp_path / "model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[off + 100] ^= 0x04
    data.write_bytes(bytes(raw))
    with tfc.open_checkpoint(tmp_path / "model.ckpt") as ck:
        ck["resnet_v1_50/conv1/weights"]  # other tensors still read
        with pytest.raises(CheckpointError) as exc:
            ck[name]
        assert exc.value.key == name and exc.value.offset == off and "checksum" in str(exc.value)
    with tfc.open_checkpoint(tmp_path / "model.ckpt", verify=False) as ck:
        assert ck[name].shape == (3, 3, 16, 16)


def test_v1_bit_flip_detected_by_block_checksum(tmp_path):
    _copy_case("slim_resnet_v1_50_os8", tmp_path)
    f = tmp_path / "resnet_v1_50.ckpt"
    raw = bytearray(f.read_bytes())
    pos = len(raw) // 2
    raw[pos] ^= 0x80
    f.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum"):
        tfc.open_checkpoint(f).verify_all()


def test_truncated_data_shard(tmp_path):
    _copy_case("pspnet_slim_psp_head", tmp_path)
    data = tmp_path / "model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:1000])
    with tfc.open_checkpoint(tmp_path / "model.ckpt") as ck:
        with pytest.raises(CheckpointError, match="outside"):
            ck.verify_all()


def test_rewritten_tables_with_snappy_blocks_read_identically(tmp_path):
    """Tables TF could write with compression on: same tensors from compressed index and V1 blocks."""
    _copy_case("slim_resnet_v1_50_os8", tmp_path)
    d, _ = _case("slim_resnet_v1_50_os8")
    idx = tmp_path / "model.ckpt.index"
    idx.write_bytes(_write_table(_table_items(d / "model.ckpt.index"), block_size=1024, compress=True))
    v1 = tmp_path / "resnet_v1_50.ckpt"
    v1.write_bytes(_write_table(_table_items(d / "resnet_v1_50.ckpt"), block_size=8192, compress=True))
    assert idx.read_bytes() != (d / "model.ckpt.index").read_bytes()
    with tfc.open_checkpoint(d / "model.ckpt") as ref, tfc.open_checkpoint(idx) as a, tfc.open_checkpoint(v1) as b:
        assert a.entries() == ref.entries() == b.entries()
        for name in ref:
            assert a[name].tobytes() == ref[name].tobytes() == b[name].tobytes(), name


def _bundle_index(entries: dict[bytes, bytes], num_shards: int = 1) -> bytes:
    header = b"\x08" + encode_varint(num_shards)
    return _write_table([(b"", header), *sorted(entries.items())])


def _entry(dtype: int, shape: list[int], offset: int, size: int, crc: int | None = None) -> bytes:
    dims = b"".join(b"\x12" + encode_varint(len(d)) + d for d in (b"\x08" + encode_varint(x) for x in shape))
    out = b"\x08" + encode_varint(dtype) + b"\x12" + encode_varint(len(dims)) + dims
    out += b"\x20" + encode_varint(offset) + b"\x28" + encode_varint(size)
    if crc is not None:
        out += b"\x35" + struct.pack("<I", crc)
    return out


def test_length_fields_are_checked_before_use(tmp_path):
    (tmp_path / "m.data-00000-of-00001").write_bytes(bytes(64))
    cases = {
        b"huge_size": _entry(1, [1 << 40], 0, 4 << 40),
        b"huge_offset": _entry(1, [4], 1 << 50, 16),
        b"shape_mismatch": _entry(1, [5], 0, 16),
        b"many_strings": _entry(7, [1 << 40], 0, 8),
        b"bad_dtype": _entry(99, [2], 0, 8),
    }
    (tmp_path / "m.index").write_bytes(_bundle_index(cases))
    with tfc.open_checkpoint(tmp_path / "m", verify=False) as ck:
        assert ck.shape("huge_size") == (1 << 40,)
        for k in cases:
            with pytest.raises(CheckpointError) as exc:
                ck[k.decode()]
            assert exc.value.key == k.decode()
    (tmp_path / "m.index").write_bytes(_bundle_index({}, num_shards=1 << 30))
    with pytest.raises(CheckpointError, match="shards"):
        tfc.open_checkpoint(tmp_path / "m")


def _read_everything(path: Path, verify: bool) -> None:
    with tfc.open_checkpoint(path, verify=verify) as ck:
        for name in ck:
            ck.shape(name), ck.dtype(name)
            ck[name]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return _copy_case("slim_resnet_v1_50_os8", tmp_path_factory.mktemp("pristine"))


@given(
    target=st.sampled_from(["model.ckpt.index", "model.ckpt.data-00000-of-00001", "resnet_v1_50.ckpt"]),
    op=st.sampled_from(["truncate", "flip", "smash"]),
    where=st.floats(0, 1, exclude_max=True),
    bit=st.integers(0, 7),
    verify=st.booleans(),
)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_corruption_gives_checkpoint_error_or_a_valid_read(pristine, target, op, where, bit, verify):
    with tempfile.TemporaryDirectory() as tmp:
        for f in pristine.iterdir():
            os.symlink(f, Path(tmp) / f.name)
        victim = Path(tmp) / target
        victim.unlink()
        raw = bytearray((pristine / target).read_bytes())
        pos = int(where * len(raw))
        if op == "truncate":
            raw = raw[:pos]
        elif op == "flip":
            raw[pos] ^= 1 << bit
        else:
            raw[pos : pos + 16] = np.random.default_rng(pos + bit).integers(0, 256, 16, np.uint8).tobytes()
        victim.write_bytes(bytes(raw))
        path = victim if target.endswith(".ckpt") else Path(tmp) / "model.ckpt"
        try:
            _read_everything(path, verify)
        except CheckpointError as exc:
            assert exc.file is not None


# ------------------------------------------------------------------------------------------------------
# against real TensorFlow (parity extra)
# ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return pytest.importorskip("tensorflow")


def _assert_same(ours: np.ndarray, theirs, name: str) -> None:
    theirs = np.asarray(theirs)
    if theirs.dtype == object or theirs.dtype.kind == "S":
        assert [bytes(x) for x in np.ravel(theirs)] == list(np.ravel(ours)), name
        return
    if theirs.dtype.name == "bfloat16":
        theirs = theirs.astype(np.float32)
    assert ours.dtype == theirs.dtype, (name, ours.dtype, theirs.dtype)
    assert ours.shape == theirs.shape, name
    assert ours.tobytes() == theirs.tobytes(), name


TF_FILES = [(c, "model.ckpt") for c, _ in CASES] + [(c, v1) for c, v1 in CASES if v1]


@pytest.mark.parity
@pytest.mark.parametrize("case,fname", TF_FILES, ids=[f"{c}/{f}" for c, f in TF_FILES])
def test_fixture_tensors_equal_tensorflow(tf, case, fname):
    d, _ = _case(case)
    path = d / fname
    reader = tf.train.load_checkpoint(str(path))
    shapes = reader.get_variable_to_shape_map()
    with tfc.open_checkpoint(path) as ck:
        assert set(ck) == set(shapes)
        for name in ck:
            assert list(ck.shape(name)) == shapes[name]
            _assert_same(ck[name], reader.get_tensor(name), name)


def _random_values(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 6, 2)
    return {
        "a/f32": rng.standard_normal((h, w, 3, 7)).astype(np.float32),
        "a/f64": rng.standard_normal((w + 4,)),
        "b/i32": rng.integers(-(2**31), 2**31, (4, h)).astype(np.int32),
        "b/i64": rng.integers(-(2**63), 2**63 - 1, (5,), dtype=np.int64),
        "c/f16": rng.standard_normal((6, w)).astype(np.float16),
        "c/bool": rng.integers(0, 2, (9,)).astype(bool),
        "c/u8": rng.integers(0, 256, (10,)).astype(np.uint8),
        "c/i8": rng.integers(-128, 128, (10,)).astype(np.int8),
        "c/i16": rng.integers(-(2**15), 2**15, (3, 3)).astype(np.int16),
        "c/c64": (rng.standard_normal(4) + 1j * rng.standard_normal(4)).astype(np.complex64),
        "d/str": np.array([b"hello", b"", b"\x00\xff" * 3, bytes(300)], dtype=object),
        "d/scalar": np.float32(rng.standard_normal()),
        "d/empty": np.zeros((0, 3), np.float32),
        "big/f32": rng.standard_normal((300, 257)).astype(np.float32),  # spans several table blocks
    }


@pytest.fixture(scope="session")
def random_checkpoints(tf, tmp_path_factory):
    """Fresh checkpoints written by tf.compat.v1 Saver (V1, V1 sharded, V2) + the values TF holds."""
    root = tmp_path_factory.mktemp("tf_random")
    out = {}
    for i, (fmt, sharded) in enumerate([("V2", False), ("V1", False), ("V1", True)]):
        vals = _random_values(100 + i)
        g = tf.Graph()
        with g.as_default():
            variables = [tf.compat.v1.Variable(v, name=k) for k, v in vals.items()]
            if fmt == "V2":  # V1's TensorSliceWriter has no bfloat16 support
                bf = tf.constant(np.random.default_rng(i).standard_normal((3, 5)), dtype=tf.bfloat16)
                variables.append(tf.compat.v1.Variable(bf, name="e/bf16"))
            init = tf.compat.v1.random_normal_initializer(seed=i)
            p0 = tf.compat.v1.get_variable(
                "part/rows", [10, 6], initializer=init, partitioner=tf.compat.v1.fixed_size_partitioner(3)
            )
            p1 = tf.compat.v1.get_variable(
                "part/cols", [4, 9], initializer=init, partitioner=tf.compat.v1.fixed_size_partitioner(2, axis=1)
            )
            with tf.compat.v1.Session(graph=g) as sess:
                sess.run(tf.compat.v1.global_variables_initializer())
                held = {v.op.name: sess.run(v) for v in variables}
                held.update({"part/rows": sess.run(p0.as_tensor()), "part/cols": sess.run(p1.as_tensor())})
                saver = tf.compat.v1.train.Saver(
                    write_version=getattr(tf.compat.v1.train.SaverDef, fmt), sharded=sharded
                )
                d = root / f"{fmt}{'s' if sharded else ''}"
                d.mkdir()
                path = saver.save(sess, str(d / "model.ckpt"), write_meta_graph=False)
        out[f"{fmt}{'-sharded' if sharded else ''}"] = (path, held)
    return out


@pytest.mark.parity
@pytest.mark.parametrize("which", ["V2", "V1", "V1-sharded"])
def test_fresh_tf_checkpoints_read_identically(tf, random_checkpoints, which):
    path, held = random_checkpoints[which]
    reader = tf.train.load_checkpoint(path)
    dtypes = reader.get_variable_to_dtype_map()
    with tfc.open_checkpoint(path) as ck:
        assert ck.format == which[:2]
        assert set(ck) == set(held) == set(dtypes)
        for name, value in held.items():
            assert ck.dtype(name) == dtypes[name].name, name
            assert ck.shape(name) == np.shape(value)
            _assert_same(ck[name], value, name)
            try:
                theirs = reader.get_tensor(name)
            except (NotImplementedError, tf.errors.UnimplementedError):
                continue  # TF's V1 python reader has no sliced or complex/half support; `held` covers it
            _assert_same(ck[name], theirs, name)


@pytest.mark.parity
def test_fresh_partitioned_slice_keys_decode(random_checkpoints):
    path, _ = random_checkpoints["V2"]
    keys = [k for k, _ in _table_items(Path(path + ".index")) if k[:1] == b"\x00"]
    decoded = sorted(decode_slice_key(k) for k in keys)
    # the saver writes explicit extents (start, length) for every dimension
    assert decoded == sorted(
        [("part/cols", ((0, 4), (0, 5))), ("part/cols", ((0, 4), (5, 4)))]
        + [("part/rows", ((s, n), (0, 6))) for s, n in [(0, 4), (4, 3), (7, 3)]]
    )
