"""Read PyTorch's legacy (pre-1.6, non-zip) ``.pth`` state dicts without torch.

The file is a chain of pickles (magic number, protocol, system info, the state
dict, the list of storage keys) followed by the raw storages. Unpickling is
restricted to an allow-list: ``collections.OrderedDict``, torch's tensor
rebuild function and its typed storages. Any other global in the file is an
error, so a malicious file cannot run code.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

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


class UnsafePickleError(pickle.UnpicklingError):
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


def load_legacy_state_dict(source: str | bytes | BinaryIO) -> "collections.OrderedDict[str, np.ndarray]":
    """Return the state dict of a legacy ``.pth`` file as numpy arrays (name -> array)."""
    if isinstance(source, (bytes, bytearray)):
        f: BinaryIO = io.BytesIO(source)
    elif isinstance(source, str):
        with open(source, "rb") as fh:
            f = io.BytesIO(fh.read())
    else:
        f = source
    if f.read(2) == b"PK":
        raise ValueError("this is a zip-format (torch >= 1.6) checkpoint, not the legacy format")
    f.seek(0)
    if _load_plain(f) != MAGIC_NUMBER:
        raise ValueError("not a legacy PyTorch file: bad magic number")
    if _load_plain(f) != PROTOCOL_VERSION:
        raise ValueError("unsupported legacy PyTorch protocol version")
    sys_info = _load_plain(f)
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian", True)):
        raise ValueError("only little-endian legacy files are supported")
    state = _RestrictedUnpickler(f).load()
    keys = _load_plain(f)

    storages: dict[str, np.ndarray] = {}
    refs = {ref.key: ref.storage_type for ref in state.values() if isinstance(ref, _TensorRef)}
    for key in keys:
        (count,) = struct.unpack("<q", f.read(8))
        dtype = refs[key].dtype if key in refs else np.dtype(np.uint8)
        nbytes = count * dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise ValueError(f"storage {key} is truncated")
        storages[key] = np.frombuffer(raw, dtype=dtype)

    out: "collections.OrderedDict[str, np.ndarray]" = collections.OrderedDict()
    for name, ref in state.items():
        if not isinstance(ref, _TensorRef):
            raise ValueError(f"entry {name!r} is not a tensor")
        flat = storages[ref.key]
        itemsize = flat.dtype.itemsize
        array = np.lib.stride_tricks.as_strided(
            flat[ref.offset:],
            shape=ref.size,
            strides=tuple(s * itemsize for s in ref.stride),
            writeable=False,
        )
        out[name] = np.array(array)
    return out
