"""Save and load results without pickle: ``result.save(path)`` and :func:`load`.

The file is one ``.npz`` archive (written with NumPy, read with ``allow_pickle=False``):

* every array of the result (NumPy arrays as they are; tensors as NumPy arrays, the
  float dtypes NumPy lacks (bfloat16, float8) widened to float32 and narrowed back on
  loading, which is exact) is one entry ``a0``, ``a1``, ...;
* the entry ``lossviz.json`` is a uint8 array holding UTF-8 JSON: the format, the result's
  class by its registry name (:data:`lossviz.results.REGISTRY`, e.g. ``"Surface"``), its
  fields (numbers, strings, lists, tuples, dicts, Weights and nested results; arrays by
  the name of their entry) and the saved facts of its provenance.

Only lossviz's own result classes are built from a file (looked up by name in the
registry, never imported by a string from the file); anything else, or a file that is not
such an archive, raises :class:`~lossviz.errors.LossvizError` naming the path. Tensors are
loaded on the CPU (a result computed on a GPU opens on a laptop); the device they were on
is in the provenance.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile

import numpy as np
import torch

from .errors import ArgumentTypeError, LossvizError
from .provenance import LIVE, Provenance
from .weights import Weights

FORMAT = "lossviz-result"
VERSION = 1
META = "lossviz.json"

_FACTS = tuple(f for f in Provenance.__dataclass_fields__ if f not in LIVE)


def _check_path(path, name: str = "path") -> str:
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(f"{name} must be a str or a path, got {type(path).__name__}")
    path = os.fspath(path)
    if not path:
        raise LossvizError(f"{name} is empty")
    return path


# --- encoding ---------------------------------------------------------------------------
class _Writer:
    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def array(self, a: np.ndarray) -> str:
        key = f"a{len(self.arrays)}"
        self.arrays[key] = a
        return key

    def encode(self, v, where: str):
        from .results import REGISTRY, Result

        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int) and type(v) is int:
            return v
        if type(v) is float:
            return v if math.isfinite(v) else {"$float": repr(v)}
        if isinstance(v, Result):
            name = type(v).__name__
            if REGISTRY.get(name) is not type(v):
                raise LossvizError(f"{where}: {name} is not a registered lossviz result type")
            flds = v._fields()
            prov = flds.pop("provenance", None)
            return {
                "$result": name,
                "fields": {k: self.encode(x, f"{where}.{k}") for k, x in flds.items()},
                "provenance": None
                if prov is None
                else {k: self.encode(x, f"{where}.provenance.{k}") for k, x in prov.facts.items()},
            }
        if isinstance(v, np.ndarray) or isinstance(v, np.generic):
            a = np.asarray(v)
            if a.dtype.hasobject or a.dtype.kind not in "biufcSUmM":
                raise LossvizError(
                    f"{where}: an array of dtype {a.dtype} cannot be saved without pickle"
                )
            key = self.array(a)
            return {"$scalar": key} if isinstance(v, np.generic) else {"$array": key}
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu()
            if t.layout != torch.strided:
                raise LossvizError(f"{where}: a {t.layout} tensor cannot be saved")
            t = t.resolve_conj().resolve_neg()
            try:
                a = t.numpy()
            except TypeError:  # bfloat16, float8: float32 holds every value exactly
                if not t.is_floating_point() or torch.finfo(t.dtype).bits > 32:
                    raise LossvizError(f"{where}: a {t.dtype} tensor cannot be saved") from None
                a = t.to(torch.float32).numpy()
            return {
                "$tensor": self.array(np.ascontiguousarray(a)),
                "dtype": str(t.dtype).replace("torch.", ""),
            }
        if isinstance(v, Weights):
            return {"$weights": [[k, self.encode(t, f"{where}[{k!r}]")] for k, t in v.items()]}
        if isinstance(v, tuple) and type(v) is tuple:
            return {"$tuple": [self.encode(x, f"{where}[{i}]") for i, x in enumerate(v)]}
        if isinstance(v, list) and type(v) is list:
            return [self.encode(x, f"{where}[{i}]") for i, x in enumerate(v)]
        if isinstance(v, dict) and type(v) is dict:
            return {
                "$dict": [
                    [self.encode(k, f"{where} key"), self.encode(x, f"{where}[{k!r}]")]
                    for k, x in v.items()
                ]
            }
        if isinstance(v, torch.dtype):
            return {"$dtype": str(v).replace("torch.", "")}
        raise LossvizError(f"{where}: a {type(v).__name__} cannot be saved")


def save(result, path) -> None:
    """Write ``result`` (any lossviz result type) to ``path``: see the module docstring.

    The file is written whole or not at all (a temporary file renamed over ``path``);
    ``path`` is used as given (no extension added; ``.npz`` is a good one).

    Args:
        result: a lossviz result (``isinstance(result, lossviz.results.Result)``).
        path: where to write it (str or path-like).

    Raises:
        ArgumentTypeError: ``result`` is not a lossviz result or ``path`` not a path.
        LossvizError: a field cannot be saved without pickle, or ``path`` cannot be
            written (the message names it).
    """
    from .results import Result

    path = _check_path(path)
    if not isinstance(result, Result):
        raise ArgumentTypeError(
            f"result must be a lossviz result (EigenResult, Surface, ...), got "
            f"{type(result).__name__}"
        )
    w = _Writer()
    body = w.encode(result, type(result).__name__)
    meta = {"format": FORMAT, "version": VERSION, "result": body}
    text = json.dumps(meta, ensure_ascii=False, allow_nan=False)
    arrays = {META: np.frombuffer(text.encode("utf-8"), dtype=np.uint8), **w.arrays}
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".lossviz-", suffix=".tmp", dir=folder)
    except OSError as e:
        raise LossvizError(f"path {path!r}: cannot write there ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError as e:
        raise LossvizError(f"path {path!r}: cannot write it ({e.strerror or e})") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# --- decoding ---------------------------------------------------------------------------
class _Bad(Exception):
    """A malformed file (turned into a LossvizError naming the path)."""


class _Reader:
    def __init__(self, npz):
        self.npz = npz
        self.names = set(npz.files)

    def array(self, key) -> np.ndarray:
        if not isinstance(key, str) or key == META or key not in self.names:
            raise _Bad(f"refers to a missing array {key!r}")
        try:
            return self.npz[key]
        except ValueError as e:  # e.g. an object array (needs pickle): refused
            raise _Bad(f"array {key!r} cannot be read without pickle ({e})") from None

    def decode(self, v, depth: int = 0):
        from .results import REGISTRY

        if depth > 64:
            raise _Bad("nested too deeply")
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, list):
            return [self.decode(x, depth + 1) for x in v]
        if not isinstance(v, dict) or len(v) == 0:
            raise _Bad(f"unexpected value {str(v)[:60]!r}")
        tags = [k for k in v if isinstance(k, str) and k.startswith("$")]
        if len(tags) != 1:
            raise _Bad(f"unexpected value {str(v)[:60]!r}")
        tag = tags[0]
        if tag == "$float":
            if v[tag] not in ("nan", "inf", "-inf"):
                raise _Bad(f"bad float {v[tag]!r}")
            return float(v[tag])
        if tag == "$array":
            return self.array(v[tag])
        if tag == "$scalar":
            a = self.array(v[tag])
            if a.ndim != 0:
                raise _Bad(f"scalar {v[tag]!r} has shape {a.shape}")
            return a[()]
        if tag == "$tensor":
            a = self.array(v[tag])
            dt = getattr(torch, str(v.get("dtype")), None)
            if not isinstance(dt, torch.dtype):
                raise _Bad(f"unknown tensor dtype {v.get('dtype')!r}")
            return torch.from_numpy(np.array(a)).to(dt)
        if tag == "$dtype":
            dt = getattr(torch, str(v[tag]), None)
            if not isinstance(dt, torch.dtype):
                raise _Bad(f"unknown dtype {v[tag]!r}")
            return dt
        if tag == "$weights":
            items = self._pairs(v[tag], depth)
            if not all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in items):
                raise _Bad("Weights entries must be name -> tensor")
            return Weights(dict(items))
        if tag == "$tuple":
            if not isinstance(v[tag], list):
                raise _Bad("a tuple must be a list")
            return tuple(self.decode(x, depth + 1) for x in v[tag])
        if tag == "$dict":
            items = self._pairs(v[tag], depth)
            try:
                return dict(items)
            except TypeError:
                raise _Bad("a dict key is not hashable") from None
        if tag == "$result":
            name = v[tag]
            cls = REGISTRY.get(name) if isinstance(name, str) else None
            if cls is None:
                raise _Bad(
                    f"unknown result type {name!r} (only lossviz's result types can be loaded: "
                    f"{', '.join(sorted(REGISTRY))})"
                )
            flds = v.get("fields")
            if not isinstance(flds, dict):
                raise _Bad(f"{name} without fields")
            values = {str(k): self.decode(x, depth + 1) for k, x in flds.items()}
            prov = v.get("provenance")
            if prov is not None:
                if not isinstance(prov, dict) or not set(prov) <= set(_FACTS):
                    raise _Bad(f"{name}: bad provenance")
                facts = {k: self.decode(x, depth + 1) for k, x in prov.items()}
                if not all(x is None or isinstance(x, (str, int)) for x in facts.values()):
                    raise _Bad(f"{name}: bad provenance")
                values["provenance"] = Provenance(**facts)
            else:
                values["provenance"] = None
            try:
                return cls._from_fields(values)
            except (TypeError, ValueError, KeyError) as e:
                raise _Bad(f"cannot rebuild a {name}: {e}") from None
        raise _Bad(f"unknown tag {tag!r}")

    def _pairs(self, items, depth: int) -> list:
        if not isinstance(items, list) or not all(
            isinstance(p, list) and len(p) == 2 for p in items
        ):
            raise _Bad("expected a list of pairs")
        return [(self.decode(k, depth + 1), self.decode(x, depth + 1)) for k, x in items]


def load(path):
    """Read a result written by ``result.save(path)``, without pickle.

    The same result type comes back with its arrays bit for bit, its numbers and strings,
    and the saved facts of its provenance (``result.provenance``); the live references
    (Objective, point) are not saved: ``.plot()`` and the repr work at once, a dashboard
    that recomputes needs the Objective again. Tensors are loaded on the CPU.

    Args:
        path: the file (str or path-like) that ``result.save`` wrote.

    Returns:
        The result (an EigenResult, Surface, PathResult, ...).

    Raises:
        ArgumentTypeError: ``path`` is not a str / path.
        LossvizError: no such file, not a lossviz result file, a result type lossviz
            does not know, or a damaged / tampered file (the message names the path).

    Examples:
        >>> import lossviz, numpy as np, tempfile, os
        >>> r = lossviz.TraceResult(value=3.0, stderr=0.1, n_hvp=20, samples=np.ones(20))
        >>> p = os.path.join(tempfile.mkdtemp(), "trace.npz")
        >>> r.save(p)
        >>> lossviz.load(p)
        TraceResult(tr = 3 ± 0.1 (std. error), hutchinson, 20 HVPs, 0.00 s)
    """
    path = _check_path(path)
    if not os.path.exists(path):
        raise LossvizError(f"path {path!r}: no such file")
    if os.path.isdir(path):
        raise LossvizError(f"path {path!r} is a folder, not a saved result")
    if not zipfile.is_zipfile(path):
        raise LossvizError(f"path {path!r} is not a lossviz result file (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if META not in npz.files:
                raise _Bad("no lossviz.json entry (an .npz, but not one written by .save)")
            raw = npz[META]
            if raw.dtype != np.uint8 or raw.ndim != 1:
                raise _Bad("its lossviz.json entry is not UTF-8 bytes")
            try:
                meta = json.loads(raw.tobytes().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise _Bad(f"its lossviz.json entry is not JSON ({e})") from None
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise _Bad("its lossviz.json entry is not a lossviz result description")
            if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
                raise _Bad(
                    f"format version {meta.get('version')!r}; this lossviz reads up to "
                    f"{VERSION} (a newer lossviz wrote it?)"
                )
            body = meta.get("result")
            if not isinstance(body, dict) or "$result" not in body:
                raise _Bad("it holds no result")
            return _Reader(npz).decode(body)
    except _Bad as e:
        raise LossvizError(f"path {path!r}: not a valid lossviz result file: {e}") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        if isinstance(e, LossvizError):
            raise
        raise LossvizError(
            f"path {path!r}: cannot read it as a lossviz result file ({e})"
        ) from None
