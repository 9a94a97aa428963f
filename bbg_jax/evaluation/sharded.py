"""Evaluation computations over every process's devices.

Each evaluation function is jitted once with its parameters as *arguments* (closure constants
would be baked into the compiled program and, on several hosts, a closed-over global array
fails). Every process calls it with the same host batch (the whole batch, read identically on
every process); the rows are split over the mesh's ``data`` axis, so each process computes its
own devices' rows, and the result comes back replicated: every process gets the whole answer
as numpy, in the batch's order. A 2-process run therefore sees exactly what a 1-process run sees.

At ImageNet size a replicated answer of N x d (the probe's features) does not fit a host:
``LocalShardedFn`` is the other shape, where each process gives only its part of the split and
gets back only its own rows (``bbg_jax.evaluation.sharded_probe`` trains on them in place).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np

from bbg_jax import sharding
from bbg_jax.evaluation import interrupt


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Every leaf as an array replicated over ``mesh`` (a no-op for the train state's leaves)."""
    rep = sharding.replicated(mesh)

    def leaf(x):
        if isinstance(x, jax.Array) and x.sharding == rep:
            return x
        host = np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x)
        return jax.make_array_from_callback(host.shape, rep, lambda index: host[index])

    return jax.tree.map(leaf, tree)


class ShardedFn:
    """``fn(args, batch)`` jitted over the mesh: rows of ``batch`` split, result replicated."""

    def __init__(self, fn: Callable[[Any, Any], Any], mesh: jax.sharding.Mesh | None = None,
                 rows_independent: bool = True, per_row_output: bool = True):
        """``rows_independent``: each row's result ignores the other rows, so a ragged batch
        may be padded. Otherwise (batch norm over the batch) a batch that does not divide over
        the devices is given whole to every device: slower, but the same numbers.
        ``per_row_output``: outputs have the batch's leading axis (trimmed back to the batch);
        otherwise they are whole-batch results (moments) and returned as they are."""
        self.mesh = sharding.make_mesh() if mesh is None else mesh
        self.rows_independent = rows_independent
        self.per_row_output = per_row_output
        self._fn = jax.jit(fn, out_shardings=sharding.replicated(self.mesh))
        me = jax.process_index()
        # This process's positions along the data axis (contiguous: devices are in process order).
        self._positions = [i for i, d in enumerate(self.mesh.devices.flat)
                           if d.process_index == me]

    def __call__(self, args: Any, batch: Any) -> Any:
        """``args``: replicated arrays (see ``replicate``); ``batch``: host arrays whose leading
        axis is the batch, identical on every process. Returns numpy, trimmed to the batch."""
        interrupt.check()  # every evaluator's batches pass here: a SIGTERM stops between them
        leaves = jax.tree.leaves(batch)
        b, n = leaves[0].shape[0], self.mesh.devices.size
        if b % n and not self.rows_independent:
            return self._unwrap(self._fn(args, replicate(batch, self.mesh)), b)
        padded = -(-b // n) * n
        per_device = padded // n
        rows = np.concatenate([np.arange(p * per_device, (p + 1) * per_device)
                               for p in self._positions])

        def local(x):
            x = np.asarray(x)
            if padded != b:  # pad with zeros: every row's result is independent of the others
                x = np.concatenate([x, np.zeros((padded - b, *x.shape[1:]), x.dtype)])
            return x[rows]

        out = self._fn(args, sharding.global_batch_from_local(
            jax.tree.map(local, batch), self.mesh))
        return self._unwrap(out, b)

    def _unwrap(self, out: Any, b: int) -> Any:
        end = b if self.per_row_output else None
        return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[:end], out)


def one_answer(value: bool) -> bool:
    """Process 0's ``value`` on every process, so that all take the same (collective) branch."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(value)))


# --- per-process rows: each process gives and gets back only its own part of a split ---------

def process_values(value: int) -> np.ndarray:
    """Every process's integer ``value``, indexed by process (a collective where there are
    several): how many rows each holds, so that all agree on shapes and on the split's order."""
    if jax.process_count() == 1:
        return np.asarray([value], np.int64)
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.asarray(value, np.int32))
    return np.asarray(gathered, np.int64).reshape(-1)


def local_devices_in_order(mesh: jax.sharding.Mesh, global_rows: int) -> list[jax.Device]:
    """This process's devices of ``mesh``, ordered by the rows of a ``global_rows`` batch they
    hold: the order in which ``jax.make_array_from_process_local_data`` lays out local rows."""
    index = sharding.batch_sharding(mesh).addressable_devices_indices_map((global_rows,))
    return sorted(index, key=lambda d: index[d][0].start or 0)


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of an array sharded over the data axis, in local-data order."""
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])


class LocalShardedFn:
    """``fn(args, batch)`` jitted over the mesh where every process gives ONLY its own rows and
    gets back only its own rows' results (they stay sharded over the data axis; nothing is
    replicated): the shape of an evaluation over a split that each process reads its part of.

    Rows must be independent (E in evaluation mode): a process's short or missing batch is
    padded with zero rows, which are cut off again.
    """

    def __init__(self, fn: Callable[[Any, Any], Any], mesh: jax.sharding.Mesh | None = None):
        self.mesh = sharding.make_mesh() if mesh is None else mesh
        self._fn = jax.jit(fn, out_shardings=sharding.batch_sharding(self.mesh))
        me = jax.process_index()
        self._local = sum(d.process_index == me for d in self.mesh.devices.flat)

    def map(self, args: Any, batches: Iterable[Any]) -> Iterator[Any]:
        """``fn`` over this process's ``batches`` (numpy pytrees, leading axis the rows);
        yields each batch's results as numpy. A collective: processes whose parts have fewer
        batches go on with empty ones until every process is done."""
        batches, template = iter(batches), None
        while True:
            batch = next(batches, None)
            if batch is not None:
                template = batch
            b = 0 if batch is None else len(jax.tree.leaves(batch)[0])
            counts = process_values(b)
            if not counts.any():
                return
            interrupt.check()  # the same number of times on every process: once per call
            if template is None:
                raise ValueError(f"Process {jax.process_index()} got no rows of the split "
                                 f"while others got {counts.tolist()}.")
            per_device = -(-int(counts.max()) // self._local)
            yield self._call(args, template if batch is None else batch, b,
                             per_device * self._local)

    def _call(self, args: Any, batch: Any, b: int, rows: int) -> Any:
        def pad(x):
            x = np.asarray(x)[:b]  # b = 0: the template's rows serve only for shape and dtype
            return np.concatenate([x, np.zeros((rows - b, *x.shape[1:]), x.dtype)])

        out = self._fn(args, sharding.global_batch_from_local(jax.tree.map(pad, batch),
                                                              self.mesh))
        return jax.tree.map(lambda x: local_rows(x)[:b], out)
