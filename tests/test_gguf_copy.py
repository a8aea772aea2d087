"""The F16 copy of a quantized GGUF (``dequantize``), checked against the Q4_1 block format
read straight from the source file's bytes."""

import os
import struct

import numpy as np
import pytest

from symoe_agents.config import parse_config
from symoe_agents.errors import ServerStartError
from symoe_agents.servers import backend_for
from symoe_agents.servers.embedded import embedded_model_path
from symoe_agents.servers.gguf_copy import copy_path, ensure_copy

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def smol_copy(tmp_path_factory):
    source = embedded_model_path("smollm2-135m-instruct")
    return source, ensure_copy(source, "f16", tmp_path_factory.mktemp("gguf"))


def _q4_1_block(raw: bytes) -> np.ndarray:
    """The 32 values of one Q4_1 block (ggml's layout: fp16 d, fp16 m, 16 bytes of nibbles,
    low nibbles first), written out here from the format, not taken from the gguf package."""
    d, m = struct.unpack("<ee", raw[:4])
    qs = raw[4:20]
    q = [b & 0x0F for b in qs] + [b >> 4 for b in qs]
    return np.array([d * v + m for v in q], dtype=np.float64)


def test_the_copy_holds_the_same_values_in_f16(smol_copy):
    source, copy = smol_copy
    src, out = gguf.GGUFReader(source), gguf.GGUFReader(copy)
    assert [t.name for t in out.tensors] == [t.name for t in src.tensors]
    by_name = {t.name: t for t in out.tensors}
    q41 = [t for t in src.tensors if t.tensor_type == gguf.GGMLQuantizationType.Q4_1]
    assert q41, "the packaged SmolLM2 is Q4_1"
    for t in src.tensors:
        o = by_name[t.name]
        assert list(o.shape) == list(t.shape)
        if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            assert o.tensor_type == t.tensor_type and np.array_equal(np.asarray(o.data), np.asarray(t.data))
        else:
            assert o.tensor_type == gguf.GGMLQuantizationType.F16
    # values: the first and last blocks of three Q4_1 tensors, from the raw bytes
    for t in (q41[0], q41[len(q41) // 2], q41[-1]):
        raw = np.asarray(t.data).tobytes()
        expanded = np.asarray(by_name[t.name].data, dtype=np.float64).reshape(-1)
        for block in (0, len(raw) // 20 - 1):
            want = _q4_1_block(raw[block * 20 : block * 20 + 20])
            got = expanded[block * 32 : block * 32 + 32]
            assert np.allclose(got, want, rtol=1e-3, atol=1e-6), t.name
    # metadata: every key kept, the file type now says F16
    skip = {"general.file_type"}
    src_kv = {k: f.contents() for k, f in src.fields.items() if not k.startswith("GGUF.") and k not in skip}
    out_kv = {k: f.contents() for k, f in out.fields.items() if not k.startswith("GGUF.") and k not in skip}
    assert out_kv == src_kv
    assert out.fields["general.file_type"].contents() == 1


def test_the_copy_is_made_once_and_keyed_by_the_source(smol_copy, tmp_path):
    source, copy = smol_copy
    before = copy.stat().st_mtime_ns
    assert ensure_copy(source, "f16", copy.parent) == copy and copy.stat().st_mtime_ns == before
    assert copy_path(source, "f32", copy.parent) != copy
    # a replaced source (other size or time) gets a new copy
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"x" * 10)
    first = copy_path(fake, "f16", tmp_path)
    fake.write_bytes(b"y" * 11)
    assert copy_path(fake, "f16", tmp_path) != first


def test_a_copy_that_cannot_be_made_says_what_to_fix_and_leaves_nothing(tmp_path):
    not_gguf = tmp_path / "broken.gguf"
    not_gguf.write_bytes(b"GGUF" + os.urandom(64))
    with pytest.raises(ServerStartError, match="remove 'dequantize'"):
        ensure_copy(not_gguf, "f16", tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [".lock"]  # no half-written file, only the folder's lock
    blocked = tmp_path / "a-file"  # a cache folder that cannot be made (tests run as root: no chmod)
    blocked.write_text("")
    with pytest.raises(ServerStartError, match="free space there or remove 'dequantize'"):
        ensure_copy(embedded_model_path("smollm2-135m-instruct"), "f16", blocked / "gguf")


def test_dequantize_is_part_of_the_server_identity():
    def key(**extra):
        data = {
            "models": {"m": {"backend": "llamacpp", "embedded": "smollm2-135m-instruct", **extra}},
            "roles": {"skill_inferencer": "m", "experts": ["m"], "aggregator": "m"},
        }
        cfg = parse_config(data, "test")
        return backend_for(cfg.models["m"]).server_key()

    assert len({key(), key(dequantize="f16"), key(dequantize="bf16"), key(dequantize="f32")}) == 4
    with pytest.raises(Exception, match="dequantize"):
        key(dequantize="q8_0")


def test_the_bf16_copy_holds_the_same_values_to_bf16_precision(tmp_path):
    source = embedded_model_path("smollm2-135m-instruct")
    copy = ensure_copy(source, "bf16", tmp_path)
    src, out = gguf.GGUFReader(source), gguf.GGUFReader(copy)
    by_name = {t.name: t for t in out.tensors}
    q41 = [t for t in src.tensors if t.tensor_type == gguf.GGMLQuantizationType.Q4_1]
    assert all(by_name[t.name].tensor_type == gguf.GGMLQuantizationType.BF16 for t in q41)
    assert out.fields["general.file_type"].contents() == 32
    t = q41[len(q41) // 2]
    raw = np.asarray(t.data).tobytes()
    bf16 = np.asarray(by_name[t.name].data).reshape(-1).view(np.uint16)[:32]
    got = (bf16.astype(np.uint32) << 16).view(np.float32).astype(np.float64)  # BF16 is the top half of an F32
    want = _q4_1_block(raw[:20])
    assert np.allclose(got, want, rtol=2.0**-8, atol=1e-30)


def test_auto_is_bf16_exactly_where_the_cpu_multiplies_bf16(tmp_path, monkeypatch):
    from symoe_agents.servers import gguf_copy

    with_bf16, without = tmp_path / "a", tmp_path / "b"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 f16c\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16x f16c\n")  # a longer name is not it
    assert gguf_copy.cpu_has_bf16(str(with_bf16)) and not gguf_copy.cpu_has_bf16(str(without))
    assert not gguf_copy.cpu_has_bf16(str(tmp_path / "absent"))  # no /proc/cpuinfo: no BF16 known, so no copy
    monkeypatch.setattr(gguf_copy, "cpu_has_bf16", lambda: True)
    assert gguf_copy.resolve("auto") == "bf16"
    monkeypatch.setattr(gguf_copy, "cpu_has_bf16", lambda: False)
    assert gguf_copy.resolve("auto") is None  # no copy: on an AVX2-only CPU it was no faster
    source = embedded_model_path("smollm2-135m-instruct")
    assert gguf_copy.copy_path(source, "auto", tmp_path) == source and gguf_copy.ensure_copy(source, "auto", tmp_path) == source
    assert list(tmp_path.glob("*.gguf")) == []
    assert gguf_copy.resolve("f32") == "f32"


def _tiny_gguf(path, values, **kv):
    """A one-tensor GGUF whose tensor is ``values`` in Q8_0 (block scale in F16)."""
    w = gguf.GGUFWriter(path, "llama")
    for key, value in kv.items():
        w.add_uint16(key, value)
    w.add_tensor("w", gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_a_value_beyond_f16_is_refused_and_bf16_holds_it(tmp_path):
    values = np.full((2, 32), 1.0, dtype=np.float32)
    values[1, 5] = 1.0e6  # F16's largest is 65504; Q8_0 holds it (its scale is 1e6 / 127)
    source = _tiny_gguf(tmp_path / "big.gguf", values)
    with pytest.raises(ServerStartError, match="beyond F16's range; use dequantize = 'bf16' or 'f32'"):
        ensure_copy(source, "f16", tmp_path / "out")
    assert list((tmp_path / "out").glob("*.gguf")) == [] and list((tmp_path / "out").glob("*.tmp")) == []
    out = gguf.GGUFReader(ensure_copy(source, "f32", tmp_path / "out"))
    assert np.asarray(out.tensors[0].data).reshape(-1)[32 + 5] == pytest.approx(1.0e6, rel=1e-2)
    out = gguf.GGUFReader(ensure_copy(source, "bf16", tmp_path / "out"))
    bits = np.asarray(out.tensors[0].data).reshape(-1).view(np.uint16)[32 + 5]
    assert float((np.uint32(bits) << 16).view(np.float32)) == pytest.approx(1.0e6, rel=1e-2)


def test_a_split_gguf_is_refused_with_what_to_do(tmp_path):
    source = _tiny_gguf(tmp_path / "part-00001-of-00002.gguf", np.ones((1, 32), dtype=np.float32), **{"split.count": 2})
    with pytest.raises(ServerStartError, match=r"one of 2 split files; merge them .* remove 'dequantize'"):
        ensure_copy(source, "f16", tmp_path / "out")


def test_a_cancelled_copy_leaves_nothing_and_a_killed_writers_leftovers_are_removed(tmp_path):
    import threading

    from symoe_agents.servers.gguf_copy import CopyCancelled

    source = _tiny_gguf(tmp_path / "m.gguf", np.ones((4, 32), dtype=np.float32))
    out = tmp_path / "out"
    stop = threading.Event()
    stop.set()
    with pytest.raises(CopyCancelled):
        ensure_copy(source, "f16", out, cancelled=stop)
    assert list(out.glob("*.gguf")) == [] and list(out.glob("*.tmp")) == []
    target = copy_path(source, "f16", out)
    stale = out / f".{target.name}.x1y2.tmp"  # what a writer killed mid-copy leaves
    stale.write_bytes(b"half")
    assert ensure_copy(source, "f16", out) == target and target.is_file()
    assert not stale.exists()


def test_two_writers_at_once_make_the_copy_once(tmp_path, monkeypatch):
    import threading
    import time

    from symoe_agents.servers import gguf_copy

    source = _tiny_gguf(tmp_path / "m.gguf", np.ones((4, 32), dtype=np.float32))
    writes, real_write = [], gguf_copy._write
    both_started = threading.Barrier(2)

    def counted(*args):
        writes.append(args[1])
        time.sleep(0.3)  # long enough that the second writer checks for the copy while the first writes
        real_write(*args)

    monkeypatch.setattr(gguf_copy, "_write", counted)
    results = []

    def worker():
        both_started.wait()
        results.append(gguf_copy.ensure_copy(source, "f16", tmp_path / "out"))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(writes) == 1 and len(results) == 2 and results[0] == results[1] and results[0].is_file()


def test_a_cancelled_run_stops_waiting_for_another_process_copy(tmp_path):
    import fcntl
    import threading

    from symoe_agents.servers.gguf_copy import CopyCancelled

    source = _tiny_gguf(tmp_path / "m.gguf", np.ones((4, 32), dtype=np.float32))
    out = tmp_path / "out"
    out.mkdir()
    holder = os.open(out / ".lock", os.O_CREAT | os.O_RDWR)  # another process is writing a copy
    fcntl.flock(holder, fcntl.LOCK_EX)
    stop, outcome = threading.Event(), []

    def worker():
        try:
            ensure_copy(source, "f16", out, cancelled=stop)
            outcome.append("copied")
        except CopyCancelled:
            outcome.append("cancelled")

    t = threading.Thread(target=worker)
    t.start()
    t.join(0.5)
    assert t.is_alive()  # waiting for the lock
    stop.set()
    t.join(5)
    os.close(holder)
    assert not t.is_alive() and outcome == ["cancelled"]
    assert list(out.glob("*.gguf")) == []
