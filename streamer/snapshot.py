"""State snapshots: every stream's state on disk, so a restart continues where it stopped.

Format (version 4; version 3 lacked the recurring surprises' times `cal.recur` and the
profile's context columns, version 2 also the time-of-day profile `seas.*`, version 1 also
the value envelope `env.*`): the magic `STRMSNAP`, a format version, the sha256 of the body,
then the body, an uncompressed `.npz` (numpy arrays only, loaded with pickle off)
holding a JSON header (routes, stream ids in least-recently-seen order, state size,
channels, model sha256) and each route's per-row arrays for the streams in use. Written
atomically: temporary file in the same directory, fsync, rename, fsync of the
directory, so a crash leaves the old snapshot or the new one, never half of one. A
corrupt or incompatible file (another format version included) is refused with a
message saying why; the daemon then starts cold.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import SnapshotError
from .state import StateStore

MAGIC = b"STRMSNAP"
VERSION = 4
_HEAD = struct.Struct("<8sI32s")


@dataclass
class RouteState:
    """One route's streams, copied out of its store (under the engine lock, then written at leisure)."""

    name: str
    model_sha256: str
    state_size: int
    channels: int
    ids: list[str]
    arrays: dict[str, np.ndarray]


def capture(name: str, store: StateStore, model_sha256: str) -> RouteState:
    """Copy the rows in use, least recently seen first (restoring keeps the eviction order)."""
    ids, rows = store.in_use()
    arrays = {k: v[rows] for k, v in store.arrays().items()}  # fancy indexing copies
    return RouteState(name, model_sha256, store.state_size, store.channels, ids, arrays)


def restore(state: RouteState, store: StateStore) -> int:
    """Put a captured route back into an empty store; returns the streams restored."""
    if (state.state_size, state.channels) != (store.state_size, store.channels):
        raise SnapshotError(
            f"route {state.name}: snapshot has state size {state.state_size} and {state.channels} channels, "
            f"the model has {store.state_size} and {store.channels}"
        )
    ids = state.ids[-store.capacity :]  # a smaller capacity keeps the most recently seen
    skip = len(state.ids) - len(ids)
    rows, _ = store.lookup(ids)
    targets = store.arrays()
    for key, target in targets.items():
        if key not in state.arrays:
            raise SnapshotError(f"route {state.name}: snapshot lacks the field {key!r}")
        saved = state.arrays[key]
        if saved.shape[1:] != target.shape[1:]:  # e.g. another number of seasonal harmonics
            raise SnapshotError(
                f"route {state.name}: field {key!r} has shape {saved.shape[1:]} per stream, "
                f"this configuration {target.shape[1:]}"
            )
        target[rows] = saved[skip:]
    return len(ids)


def encode(routes: list[RouteState]) -> bytes:
    header = {
        "version": VERSION,
        "routes": [
            {
                "name": r.name,
                "model_sha256": r.model_sha256,
                "state_size": r.state_size,
                "channels": r.channels,
                "ids": r.ids,
                "fields": sorted(r.arrays),
            }
            for r in routes
        ],
    }
    arrays = {"header": np.frombuffer(json.dumps(header).encode(), np.uint8)}
    for i, r in enumerate(routes):
        arrays.update({f"{i}/{k}": v for k, v in r.arrays.items()})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    body = buf.getvalue()
    return _HEAD.pack(MAGIC, VERSION, hashlib.sha256(body).digest()) + body


def decode(blob: bytes) -> list[RouteState]:
    if len(blob) < _HEAD.size:
        raise SnapshotError("snapshot is truncated (shorter than its header)")
    magic, version, digest = _HEAD.unpack_from(blob)
    if magic != MAGIC:
        raise SnapshotError("not a streamer snapshot (bad magic)")
    if version != VERSION:
        raise SnapshotError(f"snapshot format version {version}, this streamer reads {VERSION}")
    body = blob[_HEAD.size :]
    if hashlib.sha256(body).digest() != digest:
        raise SnapshotError("snapshot checksum mismatch (corrupt or truncated)")
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as npz:
            header = json.loads(npz["header"].tobytes())
            return [
                RouteState(
                    r["name"],
                    r["model_sha256"],
                    int(r["state_size"]),
                    int(r["channels"]),
                    list(r["ids"]),
                    {k: npz[f"{i}/{k}"] for k in r["fields"]},
                )
                for i, r in enumerate(header["routes"])
            ]
    except (ValueError, KeyError, OSError) as e:
        raise SnapshotError(f"snapshot body unreadable: {e}") from None


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(path: Path, routes: list[RouteState]) -> int:
    """Write a snapshot atomically; returns its size in bytes."""
    data = encode(routes)
    write_atomic(path, data)
    return len(data)


def load(path: Path) -> list[RouteState]:
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise SnapshotError(f"cannot read snapshot {path}: {e.strerror}") from None
    return decode(blob)
