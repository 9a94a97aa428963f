"""The linear probe trained data-parallel on features that stay sharded over every device.

At the paper's size (1.27M ImageNet training images, 24,576 floats each for RevNet-50x4's
avepool + bn_crelu features) the features of a split are ~125 GB: no host can hold them, let
alone every host. Here each process extracts only ITS part of the split
(``LocalFeatureExtractor``), keeps its rows, and the probe trains on global ``jax.Array``s
sharded over the mesh's ``data`` axis (``shard_rows``), so a host holds about N x d / hosts.

Same protocol and same numbers as ``probe.train_probe`` (the paper's linear evaluation: frozen
E, one softmax classifier per L2 strength of a grid, vmapped, Adam; the strength with the best
train_val top-1 is chosen):
* Every row carries its place in the split (``ids``): processes hold contiguous parts in process
  order (``tfds.even_splits``, as ``bbg_jax.data.pipeline`` reads them), so a row's id is its
  index in the split whatever the number of processes or devices. Padding rows have id -1.
* Each epoch draws ``rng.permutation(N)`` over ids with ``train_probe``'s generator and seed,
  and each step's minibatch is the same ``bs`` ids as there (the ragged last one dropped). The
  minibatch's rows are fetched from the devices that hold them and split evenly over all
  devices; the gradient is the mean over the global minibatch (jit sums it over devices).
  The minibatches are therefore the same for ANY process and device count; only the order of
  the floating-point sums differs (equal to ~1e-6 on one device, close elsewhere).
* top-1/top-5 are counted on every device's rows and summed; ties rank the lower class first.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from bbg_jax import paths, sharding
from bbg_jax.evaluation import interrupt
from bbg_jax.evaluation.probe import FEATURE_NAMES, FEATURES, ProbeResult, ProbeSettings, feature_fn
from bbg_jax.evaluation.probe_files import this_process_file
from bbg_jax.evaluation.sharded import (
    LocalShardedFn,
    local_devices_in_order,
    process_values,
    replicate,
)

DATA = sharding.DATA_AXIS


# --- extraction: each process its own rows ----------------------------------------------------

class LocalFeatureExtractor:
    """E's probe features of this process's part of a split, as numpy of this process's rows
    only (``probe.FeatureExtractor`` returns every row to every process)."""

    def __init__(self, encoder: nn.Module, mesh: jax.sharding.Mesh | None = None):
        self._forward = LocalShardedFn(feature_fn(encoder), mesh)

    def __call__(self, variables: dict, batches: Iterable[dict], image_key: str = "image_e"
                 ) -> dict[str, np.ndarray]:
        """{avepool_feat, bn_crelu_feat, label} of this process's rows, in its batches' order.
        A collective: every process calls it, each with its own batches."""
        variables = replicate(variables, self._forward.mesh)
        parts: dict[str, list[np.ndarray]] = {k: [] for k in (*FEATURES, "label")}
        batches = list_labels(batches, parts["label"], image_key)
        for out in self._forward.map(variables, batches):
            for k in FEATURES:
                parts[k].append(out[k])
        return {k: concatenate_freeing(v) for k, v in parts.items()}


def cached_local(path: paths.PathLike | None, compute: Callable[[], dict[str, np.ndarray]]
                 ) -> dict[str, np.ndarray]:
    """``compute()`` of this process's rows once, kept as this process's own .npz next to
    ``path`` (``probe_files.this_process_file``): each process writes and reads only its part,
    straight to and from the workdir (a bucket included), never through another process.
    A collective: the files are read only where every process has its own."""
    if not path:
        return compute()
    path = this_process_file(paths.path(path))
    if process_values(int(path.exists())).min() == 1:
        return paths.load_npz(path)
    arrays = compute()
    paths.save_npz(path, arrays)  # atomic: a preempted write never leaves a truncated cache
    return arrays


def list_labels(batches: Iterable[dict], labels: list, image_key: str) -> Iterable[np.ndarray]:
    """The batches' images; their labels go to ``labels`` on the way."""
    for batch in batches:
        labels.append(np.asarray(batch["label"], np.int32))
        yield np.asarray(batch[image_key])


def concatenate_freeing(parts: list[np.ndarray]) -> np.ndarray:
    """``np.concatenate(parts)``, releasing each part once copied: the peak is the result plus
    one part, not twice the result (at ImageNet size a host's part of the features is GBs)."""
    if not parts:
        return np.zeros((0,), np.float32)
    out = np.empty((sum(len(p) for p in parts), *parts[0].shape[1:]), parts[0].dtype)
    start = 0
    while parts:
        part = parts.pop(0)
        out[start:start + len(part)] = part
        start += len(part)
    return out


# --- rows as global arrays --------------------------------------------------------------------

@functools.partial(jax.tree_util.register_dataclass, data_fields=["x", "y", "ids"],
                   meta_fields=["count"])  # a pytree: jitted functions take it whole
@dataclasses.dataclass
class ShardedRows:
    """One split's rows over all processes as global arrays sharded over ``data``."""

    x: jax.Array    # [R, d] features; padding rows are zeros
    y: jax.Array    # [R] int32 labels
    ids: jax.Array  # [R] int32: the row's index in the split (processes in order); -1: padding
    count: int      # N, the split's rows over all processes


def shard_rows(x: np.ndarray, y: np.ndarray, mesh: jax.sharding.Mesh) -> ShardedRows:
    """This process's rows (``x`` [n, d], ``y`` [n]) -> the split's global arrays. Collective.

    Processes may hold different numbers of rows: every device gets ``per_device`` rows, the
    short ones padded (ids -1). Each device's chunk is copied to it on its own, so no padded
    copy of the whole local part is made on the host.
    """
    counts = process_values(len(x))
    me = jax.process_index()
    local = sum(d.process_index == me for d in mesh.devices.flat)
    per_device = max(1, -(-int(counts.max()) // local))
    rows = per_device * mesh.devices.size
    devices = local_devices_in_order(mesh, rows)
    ids = np.full(per_device * len(devices), -1, np.int32)
    ids[:len(x)] = int(counts[:me].sum()) + np.arange(len(x))

    def build(local: np.ndarray) -> jax.Array:
        chunks = [_chunk(local, j * per_device, per_device) for j in range(len(devices))]
        return jax.make_array_from_single_device_arrays(
            (rows, *local.shape[1:]), sharding.batch_sharding(mesh),
            [jax.device_put(c, d) for c, d in zip(chunks, devices, strict=True)])

    return ShardedRows(build(np.asarray(x, np.float32)), build(np.asarray(y, np.int32)),
                       build(ids), int(counts.sum()))


def _chunk(local: np.ndarray, start: int, size: int) -> np.ndarray:
    """Rows [start, start + size) of ``local``, zero-padded past its end."""
    part = local[start:start + size]
    if len(part) == size:
        return part
    return np.concatenate([part, np.zeros((size - len(part), *local.shape[1:]), local.dtype)])


def gather_minibatch(rows: ShardedRows, idx: jax.Array, mesh: jax.sharding.Mesh):
    """The rows whose ids are ``idx`` ([B], replicated; -1: none), split over ``data``.

    Each device looks up the ids it holds (its valid ids are consecutive: a process's rows are
    a contiguous range of the split) and zeros the others; a sum-scatter over devices then
    hands every device its B / devices rows. Exactly one device holds each id, so the sum is
    exact. Returns (x [B, d], y [B], valid [B]) sharded over ``data``."""
    def local(x, y, ids, idx):
        j = idx - ids[0]
        hit = (idx >= 0) & (j >= 0) & (j < jnp.sum(ids >= 0))
        j = jnp.clip(j, 0, x.shape[0] - 1)
        parts = (jnp.where(hit[:, None], x[j], 0.0), jnp.where(hit, y[j], 0),
                 hit.astype(jnp.float32))
        return tuple(jax.lax.psum_scatter(p, DATA, scatter_dimension=0, tiled=True)
                     for p in parts)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(DATA), P(DATA), P(DATA), P()),
                         out_specs=P(DATA))(rows.x, rows.y, rows.ids, idx)


# --- training ---------------------------------------------------------------------------------

def epoch_minibatches(rng: np.random.Generator, n: int, bs: int, devices: int) -> np.ndarray:
    """[steps, B] ids of one epoch: ``train_probe``'s draw and cut (ragged batch dropped),
    each batch padded with -1 to B, a multiple of the devices, so that it splits evenly."""
    order = rng.permutation(n)
    steps = n // bs
    batches = order[:steps * bs].reshape(steps, bs).astype(np.int32)
    pad = -bs % devices
    return np.pad(batches, ((0, 0), (0, pad)), constant_values=-1)


def _loss(p, lam, x, y, valid, bs: int):
    logits = x @ p["w"] + p["b"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return jnp.sum(ce * valid) / bs + 0.5 * lam * jnp.sum(p["w"] ** 2)  # no penalty on b


def _epoch_fn(tx: optax.GradientTransformation, l2: np.ndarray, bs: int,
              mesh: jax.sharding.Mesh):
    """One jitted epoch: a scan over the epoch's minibatches (one dispatch per epoch)."""
    rep = sharding.replicated(mesh)

    def epoch(params, opt_state, rows: ShardedRows, batches):
        def step(carry, idx):
            x, y, valid = gather_minibatch(rows, idx, mesh)

            def one(p, s, lam):
                g = jax.grad(_loss)(p, lam, x, y, valid, bs)  # jit sums over the devices
                updates, s = tx.update(g, s, p)
                return optax.apply_updates(p, updates), s

            return jax.vmap(one)(*carry, l2), None

        return jax.lax.scan(step, (params, opt_state), batches)[0]

    return jax.jit(epoch, out_shardings=(rep, rep))


def train_probe_sharded(train: ShardedRows, val: ShardedRows, num_classes: int,
                        settings: ProbeSettings | None = None,
                        mesh: jax.sharding.Mesh | None = None) -> ProbeResult:
    """``probe.train_probe`` on sharded rows: one classifier per L2 strength (vmapped, the same
    minibatches), each step's minibatch split over all devices; chosen on val top-1.
    A collective: every process calls it with the same settings."""
    mesh = sharding.make_mesh() if mesh is None else mesh
    settings = ProbeSettings() if settings is None else settings
    d = train.x.shape[1]
    l2 = np.asarray(settings.l2_grid, np.float32)  # a constant (a global array could not be)
    tx = optax.adam(settings.learning_rate)
    params = replicate({"w": np.zeros((len(settings.l2_grid), d, num_classes), np.float32),
                        "b": np.zeros((len(settings.l2_grid), num_classes), np.float32)}, mesh)
    opt_state = jax.jit(jax.vmap(tx.init), out_shardings=sharding.replicated(mesh))(params)
    bs = min(settings.batch_size, train.count)
    epoch = _epoch_fn(tx, l2, bs, mesh)
    rng = np.random.default_rng(settings.seed)  # the same draws on every process
    for _ in range(settings.epochs):
        interrupt.check()  # collective where installed: once per epoch on every process
        batches = epoch_minibatches(rng, train.count, bs, mesh.devices.size)
        params, opt_state = epoch(params, opt_state, train, replicate(batches, mesh))
    top1 = topk_fractions(params, val, mesh)[1]
    best = int(np.argmax(top1))  # ties: the weakest L2, first in the grid
    chosen = jax.tree.map(lambda a: np.asarray(a.addressable_data(0))[best], params)
    return ProbeResult(l2=float(settings.l2_grid[best]), val_top1_per_l2=list(top1),
                       weights=chosen["w"], bias=chosen["b"])


# --- evaluation -------------------------------------------------------------------------------

def _hits(w, b, x, y, ids):
    """Per classifier [n_l2]: how many valid rows have their label in the top 1 and top 5.
    A label's rank is the number of classes ranked above it (larger logit, or equal logit and
    lower class: a stable sort), so a constant classifier is not credited with every label."""
    logits = jnp.einsum("rd,ldk->lrk", x, w) + b[:, None, :]
    true = jnp.take_along_axis(logits, y[None, :, None], axis=-1)
    classes = jnp.arange(logits.shape[-1])
    rank = jnp.sum((logits > true) | ((logits == true) & (classes < y[:, None])), axis=-1)
    valid = ids >= 0
    return tuple(jnp.sum((rank < k) & valid, axis=-1) for k in (1, 5))


def topk_fractions(params: dict, rows: ShardedRows, mesh: jax.sharding.Mesh
                   ) -> dict[int, list[float]]:
    """{1: top-1 per classifier, 5: top-5 per classifier} on ``rows`` (counts summed over the
    devices; only [n_l2] integers leave them)."""
    counts = jax.jit(_hits, out_shardings=sharding.replicated(mesh))(
        params["w"], params["b"], rows.x, rows.y, rows.ids)
    return {k: [int(c) / rows.count for c in np.asarray(v.addressable_data(0))]
            for k, v in zip((1, 5), counts, strict=True)}


def evaluate_probe_sharded(result: ProbeResult, rows: ShardedRows,
                           mesh: jax.sharding.Mesh | None = None) -> dict[str, float]:
    """``probe.evaluate_probe`` on sharded rows. A collective."""
    mesh = sharding.make_mesh() if mesh is None else mesh
    params = replicate({"w": result.weights[None], "b": result.bias[None]}, mesh)
    frac = topk_fractions(params, rows, mesh)
    return {"top1": frac[1][0], "top5": frac[5][0]}


def global_num_classes(labels: Sequence[np.ndarray]) -> int:
    """1 + the largest label any process holds (``ProbeEvaluator`` counts classes so)."""
    local = max((int(np.max(y)) for y in labels if len(y)), default=-1)
    return int(process_values(local).max()) + 1


def probe_metrics_sharded(features: dict[str, dict[str, np.ndarray]], num_classes: int,
                          settings: ProbeSettings | None = None,
                          feature_keys: Sequence[str] = FEATURES,
                          fitted: dict[str, ProbeResult] | None = None,
                          mesh: jax.sharding.Mesh | None = None) -> dict[str, float]:
    """``probe.probe_metrics`` where ``features`` holds only this process's rows of each split
    (``LocalFeatureExtractor``); the same metric names. A collective."""
    mesh = sharding.make_mesh() if mesh is None else mesh
    out: dict[str, float] = {}
    for key in feature_keys:
        name = FEATURE_NAMES[key]
        # One feature at a time on the devices: the other's arrays are freed meanwhile.
        rows = {split: shard_rows(f[key], f["label"], mesh) for split, f in features.items()}
        result = train_probe_sharded(rows["train"], rows["trainval"], num_classes, settings,
                                     mesh)
        if fitted is not None:
            fitted[key] = result
        out[f"probe_l2_{name}"] = result.l2
        for split in ("trainval", "test"):
            if split in rows:
                for metric, value in evaluate_probe_sharded(result, rows[split], mesh).items():
                    out[f"probe_{metric}_{name}_{split}"] = value
        del rows
    return out
