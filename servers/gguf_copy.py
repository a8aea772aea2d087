"""A copy of a GGUF with its quantized tensors expanded to BF16, F16 or F32 (``dequantize``).

Why: on a CPU, llama.cpp multiplies some quantized types much more slowly than others.
SmolLM2's Q4_1 has no repacked kernel on x86, so its prompts are compute bound at about
490 tokens/s on these 2 cores; the same weights in F16 go through llama.cpp's tinyBLAS at
about 1,070, and in BF16 on a CPU with AVX512_BF16 at about 1,500 (docs/performance.md).
For a model this small the copy costs little memory (90 MB to 271 MB). It is the same
model: every value is the one the quantized block defines (d*q+m), rounded once to the
16-bit type, which is finer than the 8-bit activations the quantized kernels multiply with.
A value beyond F16's range is refused (BF16 and F32 hold it), never written as infinity.

The copy is made once per source file, off the event loop (the manager calls
``ensure_copy`` in a worker thread before it launches the server, and stops it between two
tensors when the run is cancelled), under a lock file so that two processes make it once,
tensor by tensor so memory stays at one tensor, and written atomically: a crash or a full
disk leaves no half file under the final name. The ``gguf`` package (ggml's own reader
and writer, in the ``[cpu]`` extra) does the reading, the block formats and the writing.
"""

from __future__ import annotations

import fcntl
import functools
import glob
import hashlib
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Literal

from symoe_agents.errors import ServerStartError

Dequantize = Literal["f16", "bf16", "f32"]

# general.file_type values (llama.cpp's llama_ftype): ALL_F32 = 0, MOSTLY_F16 = 1, MOSTLY_BF16 = 32
_FILE_TYPE = {"f32": 0, "f16": 1, "bf16": 32}
# part of every copy's name: a change to how copies are written gets new copies
_FORMAT = 2


class CopyCancelled(Exception):
    """The run was cancelled while the copy was being written (nothing is left behind)."""


@functools.lru_cache(maxsize=None)
def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies BF16 natively (x86 AVX512_BF16), read from /proc/cpuinfo
    once: ``auto`` is resolved for every server key, preflight, launch and copy."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512_bf16" in line.split()
    except OSError:
        pass
    return False


def resolve(dtype: str) -> Dequantize | None:
    """The type a copy is made in; None: no copy, the file is served as it is. ``auto``:
    BF16 where the CPU has native BF16 dot products, else no copy. Measured with
    bench/cpu_weights.py: on an EPYC with AVX512_BF16 the BF16 copy processed prompts 3.1x
    and decoded 16 requests 2.1x faster than Q4_1; on an EPYC with AVX2 only, F16 and BF16
    processed prompts 1.3x faster but decoded 16 requests at 0.93-0.99x and one at 0.5x,
    and `make example` took as long (56-62 s against 61-65 s for F16), so there a copy
    buys nothing."""
    if dtype == "auto":
        return "bf16" if cpu_has_bf16() else None
    assert dtype in _FILE_TYPE, dtype
    return dtype  # type: ignore[return-value]


INSTALL_HINT = 'dequantize needs the gguf package: pip install "symoe-agents[cpu]"'


def cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "symoe" / "gguf"


def gguf_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("gguf") is not None


def copy_path(source: Path, dtype: str, folder: Path | None = None) -> Path:
    """Where the copy of ``source`` lives (pure apart from one stat); ``source`` itself where
    ``auto`` makes no copy. Keyed by the source's real path, size and modification time, so
    a replaced model file gets a new copy."""
    served = resolve(dtype)
    if served is None:
        return source
    dtype = served
    real = source.resolve()
    st = real.stat()
    ident = f"{_FORMAT}\0{real}\0{st.st_size}\0{st.st_mtime_ns}\0{dtype}".encode()
    digest = hashlib.sha256(ident).hexdigest()[:12]
    return (folder or cache_dir()) / f"{real.stem}.{dtype}-{digest}.gguf"


def ensure_copy(source: Path, dtype: str, folder: Path | None = None, cancelled: threading.Event | None = None) -> Path:
    """The expanded copy of ``source``, written first if it is not there yet. Blocking:
    call it in a worker thread; setting ``cancelled`` stops it between two tensors
    (CopyCancelled). Raises ServerStartError with what to fix."""
    label = source.name
    served = resolve(dtype)
    if served is None:
        return source  # auto on a CPU where a copy is no faster
    dtype = served
    try:
        target = copy_path(source, dtype, folder)
    except OSError as exc:
        raise ServerStartError(label, f"cannot read {source}: {exc.strerror or exc}") from None
    if target.is_file():
        return target
    if not gguf_available():
        raise ServerStartError(label, INSTALL_HINT)
    no_space = "free space there or remove 'dequantize'"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # one lock file per folder, kept (removing it would let a waiter lock a stale file)
        lock = os.open(target.parent / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as exc:
        raise ServerStartError(label, f"cannot write the {dtype} copy in {target.parent}: {exc.strerror or exc}; {no_space}") from None
    try:
        tmp = None
        try:
            _lock(lock, cancelled)  # a second process waits here, then finds the copy made
            if target.is_file():
                return target
            for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):  # a killed writer's; the lock says none is live
                stale.unlink(missing_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            os.close(fd)
            _write(source, Path(tmp), dtype, cancelled)
            os.replace(tmp, target)  # atomic: readers see no file or the whole file
        except CopyCancelled:
            raise
        except OSError as exc:
            raise ServerStartError(label, f"cannot write the {dtype} copy {target}: {exc.strerror or exc}; {no_space}") from None
        except Exception as exc:  # a file the gguf package cannot read or a type it cannot expand
            raise ServerStartError(label, f"cannot expand {source} to {dtype}: {exc}; remove 'dequantize' for this model") from None
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
    finally:
        os.close(lock)  # releases the lock
    return target


def _lock(fd: int, cancelled: threading.Event | None) -> None:
    """Wait for the folder's lock, giving up when ``cancelled`` is set: a cancelled run
    does not wait out another process's copy."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if cancelled is not None and cancelled.is_set():
                raise CopyCancelled() from None
            time.sleep(0.1)


def _write(source: Path, dest: Path, dtype: Dequantize, cancelled: threading.Event | None = None) -> None:
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
    from gguf.quants import dequantize, quantize

    keep = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16}
    reader = GGUFReader(source)
    split = reader.fields.get("split.count")
    if split is not None and int(split.contents()) > 1:  # the other parts hold tensors this file only names
        raise ValueError(f"it is one of {int(split.contents())} split files; merge them (llama-gguf-split --merge) first")
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(dest, arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.alignment"):
            continue  # the writer sets these itself
        if name == "general.file_type":
            writer.add_key_value(name, _FILE_TYPE[dtype], GGUFValueType.UINT32)
            continue
        kind = field.types[0]
        if kind == GGUFValueType.ARRAY:
            writer.add_key_value(name, field.contents(), kind, sub_type=field.types[-1])
        else:
            writer.add_key_value(name, field.contents(), kind)

    def expanded(t):
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dimensions innermost first
        if t.tensor_type in keep:
            return np.asarray(t.data)
        values = dequantize(t.data, t.tensor_type).reshape(shape)
        if dtype == "bf16":  # the gguf package's BF16 rounding (to nearest even), as raw bytes
            return quantize(values.astype(np.float32), GGMLQuantizationType.BF16)
        if dtype == "f32":
            return values.astype(np.float32)
        if values.size and not max(float(values.max()), -float(values.min())) < 65520.0:  # rounds to infinity in F16 (or is not finite)
            raise ValueError(f"tensor {t.name} holds values beyond F16's range; use dequantize = 'bf16' or 'f32'")
        return values.astype(np.float16)

    for t in reader.tensors:  # the sizes first (the header needs them), then the data
        shape = tuple(int(n) for n in reversed(t.shape))
        if t.tensor_type in keep:
            raw = np.asarray(t.data)
            kept = t.tensor_type if raw.dtype == np.uint8 else None  # BF16 is read as raw bytes
            writer.add_tensor_info(t.name, raw.shape if kept else shape, raw.dtype, int(raw.nbytes), raw_dtype=kept)
        elif dtype == "bf16":
            writer.add_tensor_info(t.name, (*shape[:-1], shape[-1] * 2), np.dtype(np.uint8), int(np.prod(shape)) * 2,
                                   raw_dtype=GGMLQuantizationType.BF16)  # fmt: skip
        else:
            item = np.dtype(np.float16 if dtype == "f16" else np.float32)
            writer.add_tensor_info(t.name, shape, item, int(np.prod(shape)) * item.itemsize)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in reader.tensors:
            if cancelled is not None and cancelled.is_set():
                raise CopyCancelled()
            writer.write_tensor_data(expanded(t))
    finally:
        writer.close()  # also on a refusal or a cancel, before the caller removes the file
    with open(dest, "rb+") as f:
        os.fsync(f.fileno())


def main() -> int:
    """Make the copies the built-in embedded pool serves (``make setup`` runs this, so the
    first run does not spend seconds on it)."""
    from symoe_agents.config import LlamaCppModel, load_config

    from .embedded import embedded_model_path

    for name, model in load_config().models.items():
        if isinstance(model, LlamaCppModel) and model.dequantize:
            source = embedded_model_path(model.embedded) if model.embedded else model.model_path
            assert source is not None
            if resolve(model.dequantize) is None:
                print(f"{name}: served as shipped ({source.name}): this CPU has no AVX512_BF16, where a copy is no faster", flush=True)
                continue
            try:
                print(f"{name}: {ensure_copy(source, model.dequantize)}", flush=True)
            except ServerStartError as exc:
                print(f"{name}: {exc.reason}", flush=True)
                return 1
    return 0
