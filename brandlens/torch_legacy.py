"""Read PyTorch's legacy (pre-1.6, non-zip) ``.pth`` state dicts without torch.

The file is a chain of pickles (magic number, protocol, system info, the state
dict, the list of storage keys) followed by the raw storages. Unpickling is
restricted to an allow-list: ``collections.OrderedDict``, torch's tensor
rebuild function and its typed storages. Any other global in the file is an
error, so a malicious file cannot run code. Nothing the file says is trusted:
every storage's length is checked against the bytes left in the file, every
tensor's offset, sizes and strides against its storage (no view reaches past
it, none overlaps itself, so no tensor is larger than its storage), and the
total allocation is capped; any violation is a one-line LegacyFileError.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from brandlens.errors import ArtifactError

MAX_TOTAL_BYTES = 4 * 1024 ** 3  # all tensors of one file together
MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class LegacyFileError(ArtifactError, ValueError):
    """A legacy ``.pth`` file that is damaged, inconsistent or not one at all (the CLI prints one line)."""


class UnsafePickleError(LegacyFileError, pickle.UnpicklingError):
    """The file references a Python global outside the allow-list."""


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_STORAGE_DTYPES[self.name])


@dataclass(frozen=True)
class _TensorRef:
    key: str
    storage_type: _StorageType
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *rest):
    storage_type, key = storage
    return _TensorRef(key, storage_type, int(storage_offset), tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafePickleError(f"refusing to load global {module}.{name}: not a tensor-rebuilding call")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise UnsafePickleError(f"unexpected persistent id {pid!r}")
        _, storage_type, key = pid[:3]
        if not isinstance(storage_type, _StorageType):
            raise UnsafePickleError(f"unexpected storage type {storage_type!r}")
        return storage_type, str(key)


def _load_plain(f: BinaryIO):
    return _RestrictedUnpickler(f).load()


def _ints(value, what: str, name: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise LegacyFileError(f"tensor {name!r}: {what} {value!r} are not non-negative integers")
    return tuple(value)


def _check_view(name: str, ref: _TensorRef, length: int) -> int:
    """The element count of a tensor view after checking it fits its storage of ``length`` elements."""
    size, stride = _ints(ref.size, "sizes", name), _ints(ref.stride, "strides", name)
    if len(size) != len(stride):
        raise LegacyFileError(f"tensor {name!r}: {len(size)} sizes but {len(stride)} strides")
    if not isinstance(ref.offset, int) or ref.offset < 0:
        raise LegacyFileError(f"tensor {name!r}: bad storage offset {ref.offset!r}")
    count = int(np.prod(size, dtype=object)) if size else 1
    if count == 0:
        return 0
    last = ref.offset + sum((n - 1) * st for n, st in zip(size, stride))
    if last >= length:
        raise LegacyFileError(f"tensor {name!r} reaches element {last} of a storage of {length}")
    if count > length - ref.offset:
        raise LegacyFileError(f"tensor {name!r} has {count} elements, more than its storage holds from offset "
                              f"{ref.offset} ({length - ref.offset}): overlapping or zero strides")
    return count


def load_legacy_state_dict(source: str | bytes | BinaryIO) -> "collections.OrderedDict[str, np.ndarray]":
    """Return the state dict of a legacy ``.pth`` file as numpy arrays (name -> array).

    Raises LegacyFileError (one line) for anything that is not a sound legacy file.
    """
    try:
        return _load(source)
    except LegacyFileError:
        raise
    except (pickle.UnpicklingError, EOFError, struct.error, ValueError, TypeError, KeyError, AttributeError,
            IndexError, MemoryError, RecursionError) as exc:
        raise LegacyFileError(f"not a readable legacy PyTorch file: {type(exc).__name__}: "
                              f"{(str(exc).splitlines() or [''])[0][:200]}") from None


def _load(source) -> "collections.OrderedDict[str, np.ndarray]":
    if isinstance(source, (bytes, bytearray)):
        f: BinaryIO = io.BytesIO(source)
    elif isinstance(source, str):
        with open(source, "rb") as fh:
            f = io.BytesIO(fh.read())
    else:
        f = source
    if f.read(2) == b"PK":
        raise LegacyFileError("this is a zip-format (torch >= 1.6) checkpoint, not the legacy format")
    f.seek(0, io.SEEK_END)
    file_size = f.tell()
    f.seek(0)
    if _load_plain(f) != MAGIC_NUMBER:
        raise LegacyFileError("not a legacy PyTorch file: bad magic number")
    if _load_plain(f) != PROTOCOL_VERSION:
        raise LegacyFileError("unsupported legacy PyTorch protocol version")
    sys_info = _load_plain(f)
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian", True)):
        raise LegacyFileError("only little-endian legacy files are supported")
    state = _RestrictedUnpickler(f).load()
    if not isinstance(state, dict):
        raise LegacyFileError(f"the state dict is a {type(state).__name__}, not a dict")
    keys = _load_plain(f)
    if not isinstance(keys, (list, tuple)):
        raise LegacyFileError("the storage key list is missing")

    storages: dict[str, np.ndarray] = {}
    refs = {ref.key: ref.storage_type for ref in state.values() if isinstance(ref, _TensorRef)}
    for key in keys:
        header = f.read(8)
        if len(header) != 8:
            raise LegacyFileError(f"storage {key} is truncated")
        (count,) = struct.unpack("<q", header)
        dtype = refs[key].dtype if key in refs else np.dtype(np.uint8)
        nbytes = count * dtype.itemsize
        if count < 0 or nbytes > file_size - f.tell():
            raise LegacyFileError(f"storage {key} claims {count} elements ({nbytes} bytes); "
                                  f"the file has {file_size - f.tell()} bytes left")
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise LegacyFileError(f"storage {key} is truncated")
        storages[str(key)] = np.frombuffer(raw, dtype=dtype)

    out: "collections.OrderedDict[str, np.ndarray]" = collections.OrderedDict()
    total = 0
    for name, ref in state.items():
        if not isinstance(ref, _TensorRef):
            raise LegacyFileError(f"entry {name!r} is not a tensor")
        if ref.key not in storages:
            raise LegacyFileError(f"tensor {name!r} refers to storage {ref.key!r}, which the file does not hold")
        flat = storages[ref.key]
        if ref.storage_type.dtype != flat.dtype:
            raise LegacyFileError(f"tensor {name!r}: storage {ref.key!r} is used with two element types")
        count = _check_view(str(name), ref, len(flat))
        total += count * flat.dtype.itemsize
        if total > MAX_TOTAL_BYTES:
            raise LegacyFileError(f"the tensors need more than {MAX_TOTAL_BYTES} bytes")
        itemsize = flat.dtype.itemsize
        if count == 0:
            out[name] = np.zeros(ref.size, flat.dtype)
            continue
        array = np.lib.stride_tricks.as_strided(
            flat[ref.offset:],
            shape=ref.size,
            strides=tuple(st * itemsize for st in ref.stride),
            writeable=False,
        )
        out[name] = np.array(array)
    return out
