"""Data in the forms Keras takes, read as batches: a bounded calibration sample for the rules
(`as_batches`, `take`) and the (x, y, sample_weight) batches the flows train and validate on
(`Batches`).

Why one reader: users hold numpy arrays, tf.data pipelines, keras.utils.PyDataset sequences and
Python generators, and may hold more data than fits in memory. The rules want a few hundred
samples as arrays; the flows want to stream. So arrays are sliced where they lie, and anything
else is read lazily, a batch at a time and only as far as needed.
"""

from __future__ import annotations

import itertools
import logging
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from kopt.errors import DataError

log = logging.getLogger(__name__)

STREAM_SAMPLES = 1024  # what as_batches reads of a stream unless told: a sample, not the data
FORMS = ("an array, (x, y), (x, y, sample_weight), a dict of arrays, a tf.data.Dataset, a "
         "keras.utils.PyDataset, a generator or a function returning one, or a list of batches")


def as_batches(data: Any, batch_size: int = 32, max_batches: int | None = None,
               input_shape: tuple | None = None, max_samples: int | None = None) -> list:
    """Turn calibration data into a list of batches of at most `batch_size` samples (float
    arrays as float32; a multi-input batch is a list or dict of arrays).

    `data` may be any form `Batches` reads (arrays, (x, y), dicts, a tf.data.Dataset, a
    PyDataset, a generator or a function returning one, a list of batches); labels are dropped.
    Arrays are split into batches; other forms are taken as batches as they come, and streams
    are read only up to `max_batches` batches or `max_samples` samples (default
    STREAM_SAMPLES), so an endless generator works. With `input_shape` (a model input shape,
    None for free dimensions) each batch is checked against it, so a wrong-shaped data set
    fails here and not deep inside a rewrite.
    """
    if data is None:
        raise DataError(f"no calibration data given: pass {FORMS}")
    src = Batches(data, batch_size, what="calibration data")
    if src.arrays is not None:
        x = src.arrays[0]
        n = sample_count(x)
        batches = [take_rows(x, slice(i, i + batch_size)) for i in range(0, n, batch_size)]
        batches = batches[:max_batches] if max_batches is not None else batches
    else:
        if max_samples is None and src.lazy:
            max_samples = STREAM_SAMPLES
        batches, count = [], 0
        for x, _, _ in src.pass_():
            batches.append(x)
            count += sample_count(x)
            if max_batches is not None and len(batches) >= max_batches or \
                    max_samples is not None and count >= max_samples:
                break
    if not batches or sum(sample_count(b) for b in batches) == 0:
        raise DataError("calibration data is empty")
    for b in batches:
        _check(b, input_shape)
    return [_tree(lambda a: a.astype(np.float32) if a.dtype.kind == "f" else a, b)
            for b in batches]


def _check(batch: Any, input_shape: tuple | None) -> None:
    for a in _leaves(batch):
        if a.ndim < 2:
            raise DataError(f"calibration batch has shape {a.shape}: need (batch, features...)")
    if input_shape is None or not isinstance(batch, np.ndarray):
        return
    want = tuple(input_shape)[1:]
    got = batch.shape[1:]
    if len(want) != len(got) or any(w is not None and w != d for w, d in zip(want, got)):
        raise DataError(f"calibration batch has sample shape {got}, the model input needs "
                        f"{want}")


def take(batches: Iterable[Any], n: int) -> Any:
    """The first `n` samples of an iterable of batches, as one array (a list or dict of arrays
    for multi-input batches). Reads no further than it needs."""
    out, count = [], 0
    for b in batches:
        out.append(take_rows(b, slice(0, n - count)))
        count += sample_count(out[-1])
        if count >= n:
            break
    if not out:
        raise DataError("calibration data is empty")
    return _concat(out)


class Batches:
    """`data` in any form Keras takes, read as (x, y, sample_weight) batches, pass after pass.

    In memory (an array, (x, y), (x, y, sample_weight), a dict of arrays for a multi-input
    model): `arrays` holds (x, y, sw) and a pass slices them in order; nothing is copied.
    Streams are read lazily, one batch at a time: a tf.data.Dataset (batched or not: with a
    `model`, a dataset of single samples is batched here), a keras.utils.PyDataset, a list of
    batches, a function returning a fresh iterator, or a one-shot generator, which goes on where
    the previous pass stopped (as Keras' fit does). Each element is x, (x,), (x, y) or
    (x, y, sample_weight), with Keras' rules (a list element is read as a tuple).

    `steps` bounds every pass (required for endless streams). With `model`, each batch is
    checked against its inputs (count, dict keys, sample shape, dtype) and for NaN/inf, and a
    pass that yields nothing is an error: bad data stops with a DataError that names what is
    wrong, before anything is built from it. `what` names the data in those messages.
    """

    def __init__(self, data: Any, batch_size: int = 64, steps: int | None = None,
                 model: Any = None, what: str = "data"):
        self.what, self.batch_size, self.steps = what, int(batch_size), steps
        self.inputs = None if model is None else _input_specs(model)
        self.arrays: tuple | None = None
        self.length: int | None = None  # batches in a full pass, when known
        self.endless = False
        self.lazy = True  # False for what already sits in memory (arrays, a list of batches)
        self._open: Callable[[], Iterator] | None = None  # a fresh pass, if the source has one
        self._once: Iterator | None = None  # a one-shot iterator
        self._ds: Any = None  # a tf.data.Dataset, whose views skip and take inside tf.data
        self._kept: list = []  # batches read ahead from a one-shot iterator, replayed first
        self._peeked: list = []  # the first batches of a re-iterable source, once read
        self._start, self._stop = 0, None  # a view's slice of each pass, in batches
        self._read(data)

    # ---- reading the forms ------------------------------------------------------------------
    def _read(self, data: Any) -> None:
        if data is None:
            raise DataError(f"{self.what}: nothing given; pass {FORMS}")
        kind = type(data).__name__
        if "DistributedDataset" in kind:
            raise DataError(f"{self.what}: a tf.distribute {kind} cannot be read back as "
                            "batches: pass the tf.data.Dataset itself and call kopt inside "
                            "strategy.scope(); Keras then splits each batch over the replicas")
        if isinstance(data, dict) or _is_array(data) or isinstance(data, tuple) and all(
                _is_array(v) or v is None or isinstance(v, (dict, list, tuple)) for v in data):
            self._arrays(data)
        elif _is_tf_dataset(data):
            self._dataset(data)
        elif _is_py_dataset(data):
            self._py_dataset(data)
        elif isinstance(data, list):
            self.lazy, self.length = False, len(data)
            self._open = lambda: iter(data)
        elif isinstance(data, types.GeneratorType) or isinstance(data, Iterator):
            self._once = iter(data)
        elif callable(data):
            self._open = lambda: iter(data())
        elif isinstance(data, Iterable):
            self._open = lambda: iter(data)
        else:
            raise DataError(f"{self.what}: cannot read a {kind}; pass {FORMS}")

    def _arrays(self, data: Any) -> None:
        x, y, sw = unpack(data)
        x, y, sw = _numpy(x), _numpy(y), _numpy(sw)
        n = sample_count(x)
        if x is None or n == 0:
            raise DataError(f"{self.what} is empty: pass {FORMS}")
        for name, part in (("labels", y), ("sample weights", sw)):
            for a in _leaves(part):
                if len(a) != n:
                    raise DataError(f"{self.what} has {n} samples but {len(a)} {name}")
        self.arrays, self.lazy = (x, y, sw), False
        self.length = -(-n // self.batch_size)
        self._checked(x, y, sw, "")

    def _dataset(self, ds: Any) -> None:
        import tensorflow as tf

        if self.inputs is not None:
            spec = unpack(ds.element_spec)[0]
            ranks = sorted(len(s.shape) for s in _leaves(spec, tf.TensorSpec))
            if ranks and ranks == sorted(len(shape) - 1 for _, shape, _ in self.inputs):
                ds = ds.batch(self.batch_size)  # a dataset of single samples
        card = int(ds.cardinality())
        self.endless = card == int(tf.data.INFINITE_CARDINALITY)
        self.length = card if card >= 0 else None
        self._ds, self._open = ds, ds.as_numpy_iterator

    def _py_dataset(self, ds: Any) -> None:
        try:
            count = ds.num_batches
        except NotImplementedError:
            count = None
        self.length, self.endless = count, count is None

        def one_pass() -> Iterator:
            for i in (range(count) if count is not None else itertools.count()):
                yield ds[i]
            ds.on_epoch_end()

        self._open = one_pass

    # ---- passes -----------------------------------------------------------------------------
    @property
    def reiterable(self) -> bool:
        """Whether every pass starts again from the beginning (all but one-shot generators)."""
        return self._once is None

    @property
    def steps_per_pass(self) -> int | None:
        """Batches in one pass: `steps` if given, else the source's length when known."""
        full = self.length
        if full is not None:
            full = max(0, full - self._start)
        if self._stop is not None:
            span = self._stop - self._start
            full = span if full is None else min(full, span)
        if self.steps is None or full is None:
            return self.steps if full is None else full
        return min(self.steps, full)

    def pass_(self) -> Iterator[tuple[Any, Any, Any]]:
        """One pass over the data, as (x, y, sample_weight) batches, checked."""
        limit = self.steps_per_pass
        if limit is None and self.endless:
            raise DataError(f"{self.what} is endless: pass steps_per_epoch (batches per epoch)")
        if self.arrays is not None:
            x, y, sw = self.arrays
            n, bs = sample_count(x), self.batch_size
            starts = range(self._start * bs, n if self._stop is None else
                           min(n, self._stop * bs), bs)
            for i in itertools.islice(starts, limit):
                rows = slice(i, i + bs)
                yield take_rows(x, rows), take_rows(y, rows), take_rows(sw, rows)
            return
        read, count = self._reader(), 0
        while limit is None or count < limit:
            try:
                batch = read()
            except StopIteration:
                break
            count += 1
            yield batch
        if count == 0:
            used = "" if self.reiterable else " (a one-shot generator, used up by an earlier " \
                "pass: pass a function returning a fresh generator, or steps_per_epoch)"
            raise DataError(f"{self.what} is empty{used}")

    __iter__ = pass_

    def _reader(self) -> Callable[[], tuple[Any, Any, Any]]:
        """A function returning the next checked batch of a pass (StopIteration at its end):
        from a fresh iterator with this view's slice, or from the one-shot iterator, after the
        batches read ahead and kept."""
        if self._once is not None:
            once = self._once
            return lambda: self._kept.pop(0) if self._kept else self._batch(next(once))
        if self._ds is not None:  # skipped batches never become numpy arrays
            items = self.dataset().as_numpy_iterator()
        else:
            items = itertools.islice(self._open(), self._start, self._stop)
        return lambda: self._batch(next(items))

    def dataset(self) -> Any:
        """This view of a tf.data source as a tf.data.Dataset (its slice and step bound applied
        inside tf.data, batches unchecked), so that training can read it without a trip
        through Python per batch; None when the source is not a tf.data.Dataset."""
        if self._ds is None:
            return None
        ds = self._ds.skip(self._start) if self._start else self._ds
        if self._stop is not None:
            ds = ds.take(self._stop - self._start)
        return ds if self.steps is None else ds.take(self.steps)

    def _batch(self, item: Any) -> tuple[Any, Any, Any]:
        x, y, sw = (_numpy(v) for v in unpack(item))
        if x is None:
            raise DataError(f"{self.what}: a batch holds no inputs")
        n = sample_count(x)
        for a in _leaves(y) + _leaves(sw):
            if len(a) != n:
                raise DataError(f"{self.what}: a batch of {n} inputs has {len(a)} labels or "
                                "sample weights")
        self._checked(x, y, sw, " batch")
        return x, y, sw

    def _checked(self, x: Any, y: Any, sw: Any, where: str) -> None:
        if self.inputs is not None:
            _check_inputs(x, self.inputs, f"{self.what}{where}")
        for name, part in (("inputs", x), ("labels", y), ("sample weights", sw)):
            for a in _leaves(part):
                # a float64 sum is NaN or inf exactly when a value is (short of 1e300s), in
                # one pass and without an array-sized mask
                if a.dtype.kind == "f" and not np.isfinite(a.sum(dtype=np.float64)):
                    raise DataError(f"{self.what}{where}: NaN or inf in the {name} "
                                    f"({int(np.size(a) - np.isfinite(a).sum())} values)")

    def peek(self, samples: int) -> list[tuple[Any, Any, Any]]:
        """The first batches holding at least `samples` samples (all there are if fewer). A
        one-shot generator keeps them and replays them first in its next pass; a re-iterable
        source keeps them for the next peek (a tf.data pass can start by filling a shuffle
        buffer the size of the data set)."""
        out, count = [], 0
        for batch in self._peeked:
            if count >= samples:
                break
            out.append(batch)
            count += sample_count(batch[0])
        if count >= samples:
            return out
        out, count = [], 0
        for batch in self.pass_():
            out.append(batch)
            count += sample_count(batch[0])
            if count >= samples:
                break
        if self._once is not None:
            self._kept = out + self._kept
        else:
            self._peeked = out
        return out

    def sample(self, samples: int) -> tuple[Any, Any]:
        """(x, y) of the first `samples` samples, as arrays (y None when the data has none)."""
        if self.arrays is not None:
            x, y, _ = self.arrays
            return take_rows(x, slice(0, samples)), take_rows(y, slice(0, samples))
        batches = self.peek(samples)
        x = take((b[0] for b in batches), samples)
        has_y = all(b[1] is not None for b in batches)
        return x, take((b[1] for b in batches), samples) if has_y else None

    def view(self, start: int = 0, stop: int | None = None,
             steps: int | None = None) -> Batches:
        """Batches start..stop of every pass of a re-iterable source (a held-out split)."""
        if not self.reiterable:
            raise DataError(f"{self.what}: a one-shot generator cannot be split into views")
        new = object.__new__(Batches)
        new.__dict__.update(self.__dict__)
        new._start, new._stop, new.steps = self._start + start, None if stop is None else \
            self._start + stop, steps
        new._peeked = []
        return new

    def head(self, batches: int, what: str) -> Batches:
        """The next `batches` batches read once and kept in memory, as their own Batches (a
        held-out split of a one-shot stream; the stream goes on after them)."""
        read, kept = self._reader(), []
        for _ in range(batches):
            try:
                kept.append(read())
            except StopIteration:
                break
        if not kept:
            raise DataError(f"{self.what} is empty")
        new = Batches([(x, y) if sw is None else (x, y, sw) for x, y, sw in kept],
                      self.batch_size, what=what)
        new.inputs = self.inputs
        return new

    def count(self) -> int:
        """Batches in one pass, reading the data once if its length is not known."""
        n = self.steps_per_pass
        if n is None and not self.reiterable:
            raise DataError(f"{self.what} is a one-shot generator of unknown length: pass "
                            "steps_per_epoch, or a function returning a fresh generator")
        if n is None:
            n = sum(1 for _ in self.pass_())
            if self._start == 0 and self._stop is None:
                self.length = n
        return n


# ---- checks --------------------------------------------------------------------------------
def _input_specs(model: Any) -> list[tuple[str, tuple, str]]:
    """(name, shape, dtype) of each model input, in order."""
    return [(str(getattr(t, "name", f"input_{i}")).split(":")[0], tuple(t.shape),
             str(getattr(t.dtype, "name", t.dtype))) for i, t in enumerate(model.inputs)]


def _check_inputs(x: Any, specs: list[tuple[str, tuple, str]], what: str) -> None:
    names = [name for name, _, _ in specs]
    if isinstance(x, dict):
        if set(x) != set(names):
            raise DataError(f"{what}: input keys {sorted(x)} do not match the model's inputs "
                            f"{names}")
        arrays = [x[name] for name in names]
    else:
        arrays = list(x) if isinstance(x, (list, tuple)) else [x]
    if len(arrays) != len(specs):
        raise DataError(f"{what}: the model takes {len(specs)} input(s) {names}, the data "
                        f"gives {len(arrays)}; pass a list in that order or a dict by name")
    for a, (name, shape, dtype) in zip(arrays, specs):
        label = f"{what}, input '{name}'"
        if a.ndim != len(shape) or any(w is not None and w != d
                                       for w, d in zip(shape[1:], a.shape[1:])):
            raise DataError(f"{label}: batches of shape {a.shape}, the model takes {shape} "
                            "(None: any size)")
        numeric = a.dtype.kind in "biuf"
        if not numeric or a.dtype.kind == "f" and ("int" in dtype or dtype == "bool"):
            raise DataError(f"{label}: data of dtype {a.dtype}, the model takes {dtype}")


# ---- nested arrays: an array, a list/tuple of arrays or a dict of arrays --------------------
def _is_array(v: Any) -> bool:
    return hasattr(v, "__array__") and not isinstance(v, dict)


def _is_tf_dataset(v: Any) -> bool:
    return any(c.__name__ == "DatasetV2" and c.__module__.startswith("tensorflow.")
               for c in type(v).__mro__)


def _is_py_dataset(v: Any) -> bool:
    return any(c.__name__ == "PyDataset" and c.__module__.startswith("keras")
               for c in type(v).__mro__)


def unpack(item: Any) -> tuple[Any, Any, Any]:
    """(x, y, sample_weight) from x, (x,), (x, y) or (x, y, sw), as Keras reads them."""
    if isinstance(item, list):
        item = tuple(item)
    if not isinstance(item, tuple):
        return item, None, None
    if not 1 <= len(item) <= 3:
        raise DataError(f"a batch must be x, (x, y) or (x, y, sample_weight), got a tuple of "
                        f"{len(item)}")
    return (tuple(item) + (None, None))[:3]


def _numpy(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, dict):
        return {k: np.asarray(a) for k, a in v.items()}
    if isinstance(v, (list, tuple)) and v and all(_is_array(a) for a in v):
        return [np.asarray(a) for a in v]
    return np.asarray(v)


def _leaves(v: Any, kind: type = np.ndarray) -> list:
    if isinstance(v, dict):
        return [a for a in v.values() if isinstance(a, kind)]
    if isinstance(v, (list, tuple)):
        return [a for a in v if isinstance(a, kind)]
    return [v] if isinstance(v, kind) else []


def _tree(fn: Callable[[np.ndarray], Any], v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, dict):
        return {k: fn(a) for k, a in v.items()}
    if isinstance(v, (list, tuple)):
        return [fn(a) for a in v]
    return fn(v)


def sample_count(v: Any) -> int:
    """Samples in nested arrays (the first leaf's length)."""
    leaves = _leaves(v)
    return len(leaves[0]) if leaves and leaves[0].ndim else 0


def take_rows(v: Any, index: Any) -> Any:
    """The samples `index` (a slice or an index array) of nested arrays."""
    return _tree(lambda a: a[index], v)


def _concat(parts: list) -> Any:
    first = parts[0]
    if isinstance(first, dict):
        return {k: np.concatenate([p[k] for p in parts]) for k in first}
    if isinstance(first, (list, tuple)):
        return [np.concatenate([p[i] for p in parts]) for i in range(len(first))]
    return np.concatenate(parts)
