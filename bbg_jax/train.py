"""The training step: ``n_d_steps`` discriminator updates, then one joint G+E update.

Which passes read and write which state (``train`` picks batch statistics / one power iteration;
a collection is written only where it is listed as updated):

* Each D update: G and E run with batch statistics but write nothing; D runs one power iteration
  and stores its spectral-norm vectors (one D pass over encoder and generator pairs together).
* The G+E update: G uses batch statistics and stores its running BN averages and spectral-norm
  vectors; E uses batch statistics and stores its running BN averages; D runs in evaluation mode
  (σ from the stored vectors, nothing written).

So each network's running statistics and spectral-norm vectors move once per update of that
network's own weights, and D scores encoder and generator pairs in one pass (it has no batch norm,
so concatenating them changes nothing but the count of power iterations).

The step consumes ``n_d_steps`` real batches (leading axis of every batch array); D update i reads
batch i with fresh z and encoder noise, and the G+E update reuses the last real batch with fresh z
and noise (as compare_gan does with its D iterations), so no data is drawn that D has not seen.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from bbg_jax import sharding
from bbg_jax.losses import bigbigan_losses
from bbg_jax.models import build_models, conv
from bbg_jax.models.layers import orthogonal_regularizer
from bbg_jax.train_state import (
    TrainState,
    ema_networks,
    learning_rates,
    lr_schedule,
    make_optimizers,
    probe_optimizer,
    update_ema,
)

if TYPE_CHECKING:  # annotations only: the step runs without ml_collections
    import ml_collections

PyTree = Any
Batch = dict[str, jax.Array]

PRIORS = ("gaussian", "uniform")


def sample_prior(key: jax.Array, shape: tuple[int, int], prior: str) -> jax.Array:
    """P_z: N(0, I) (BigBiGAN) or U(-1, 1)^d (the uniform-prior ablation)."""
    if prior == "gaussian":
        return jax.random.normal(key, shape, jnp.float32)
    if prior == "uniform":
        return jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0)
    raise ValueError(f"train.prior={prior!r}; choose one of {PRIORS}.")


def _interleave(a: jax.Array, b: jax.Array) -> jax.Array:
    """[a0, b0, a1, b1, ...]: one batch for D that keeps each device's rows on that device.

    Concatenating two batch-sharded arrays would put the real half on the first half of the
    devices and force an exchange of activations; interleaving keeps row i of both on its device.
    """
    return jnp.stack([a, b], axis=1).reshape((2 * a.shape[0],) + a.shape[1:])


def _split_scores(scores: dict[str, jax.Array]) -> tuple[dict, dict]:
    """Inverse of ``_interleave`` on D's scores: (encoder-pair scores, generator-pair scores)."""
    pairs = {k: v.reshape(-1, 2) for k, v in scores.items()}
    return {k: v[:, 0] for k, v in pairs.items()}, {k: v[:, 1] for k, v in pairs.items()}


class StepFunctions(NamedTuple):
    """The pure pieces of a step, exposed so tests can exercise each update alone.

    ``draw(key, n)`` -> latents/noise; ``d_update(state, real, noise)`` and
    ``ge_update(state, real, noise)`` -> (state, metrics); ``train_step(state, batch)`` composes
    them. ``d_update_on_pairs(state, (x, ẑ), (x̂, z))`` is the D update on pairs made by the
    caller.
    """

    draw: Callable
    d_update: Callable
    d_update_on_pairs: Callable
    ge_update: Callable
    train_step: Callable


def make_train_step(config: ml_collections.ConfigDict, mesh: Mesh | None = None
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """Returns the pure step function ``(state, batch) -> (state, metrics)`` (not yet jitted).

    ``batch`` holds ``image_d`` (and ``image_e`` with an encoder, ``label`` for class-conditional
    models), each with leading axes (n_d_steps, global_batch). ``mesh`` (optional) lets the step
    shard the latents and noise it draws like the batch.
    """
    return make_step_functions(config, mesh).train_step


def make_step_functions(config: ml_collections.ConfigDict, mesh: Mesh | None = None
                        ) -> StepFunctions:
    """Builds the models and optimizers of ``config`` and the step's pure functions."""
    step = _Step(config, mesh)
    return StepFunctions(step.draw, step.d_update, step.d_update_on_pairs, step.ge_update,
                         step.train_step)


def _variables(state: TrainState, name: str, params: PyTree | None = None) -> dict:
    """A network's variables for ``apply``: its stored state with ``params`` in place of its
    own when the loss differentiates them."""
    p = state.params[name] if params is None else params
    return {"params": p, **state.model_state[name]}


def _real_view(batch: Batch, i: int) -> dict[str, jax.Array]:
    """Real batch ``i`` of the step's ``n_d_steps``."""
    return {k: v[i] for k, v in batch.items()}


def _keeps_state(module):
    """``module`` that writes no stored state, for D's update.

    D's update runs G and E in training mode (batch statistics, as in their own update) but
    keeps their stored state, which only their own update writes. (A module of one's own
    without the field keeps no state to protect.)
    """
    if module is None or not hasattr(module, "update_state"):
        return module
    return module.clone(update_state=False)


def _with_conv_weight_grad(method):
    """Traces ``method`` under the step's convolution weight-gradient choice: it is read while
    tracing, so each update must carry it for callers that jit that update alone."""

    @functools.wraps(method)
    def traced_with(self, *args):
        with conv.weight_grad(self.weight_grad):
            return method(self, *args)
    return traced_with


class _Step:
    """The step's pure functions, bound to the models, optimizers and settings of one config.

    Holds no arrays: only what is fixed while tracing, so its methods stay pure functions of
    their arguments.
    """

    def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh | None):
        models = build_models(config)
        t = self.t = config.train
        self.config, self.mesh = config, mesh
        self.G, self.D = models["G"], models["D"]
        self.E = models.get("E")
        self.txs = make_optimizers(config, sorted(models))
        self.probe_tx = probe_optimizer(config)
        self.terms = t.loss_terms
        self.class_conditional = config.model.generator.conditioning == "class"
        self.num_classes = config.model.generator.num_classes
        self.z_dim = config.model.z_dim
        peaks = learning_rates(config)
        self.schedules = {k: lr_schedule(v, t.warmup_steps) for k, v in peaks.items()}
        # Which weight-gradient the convolutions use (bbg_jax/models/conv.py): "auto" picks by the
        # platform the step runs on (the mesh's, so an AOT compile for a TPU topology gets XLA's).
        platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
        self.weight_grad = conv.resolve(t.get("conv_weight_grad", "xla"), platform)
        self.G_keeps_state, self.E_keeps_state = _keeps_state(self.G), _keeps_state(self.E)

    def draw(self, key: jax.Array, n: int) -> dict[str, jax.Array]:
        """Latents ``z``, encoder noise ``eps`` and labels ``y`` for ``n`` examples, sharded like
        the batch."""
        kz, ke, ky = jax.random.split(key, 3)
        z = sample_prior(kz, (n, self.z_dim), self.t.prior)
        out = {"z": sharding.shard_like_batch(z, self.mesh)}
        if self.E is not None:
            eps = jax.random.normal(ke, (n, self.z_dim), jnp.float32)
            out["eps"] = sharding.shard_like_batch(eps, self.mesh)
        if self.class_conditional:
            y = jax.random.randint(ky, (n,), 0, self.num_classes)
            out["y"] = sharding.shard_like_batch(y, self.mesh)
        return out

    def _pair_seconds(self, real, noise, z_hat):
        """What D reads beside x on each side: (ẑ = E(x), z), (label, y) or nothing."""
        if self.E is not None:
            return z_hat, noise["z"]
        if self.config.model.discriminator.num_classes > 0:
            return real["label"], noise["y"]
        return None, None

    def _d_scores(self, d_vars, enc_pairs, gen_pairs, train, mutable):
        """D on encoder (real) pairs and generator pairs, each (x, second), in one pass."""
        x = _interleave(enc_pairs[0], gen_pairs[0])
        second = None if enc_pairs[1] is None else _interleave(enc_pairs[1], gen_pairs[1])
        out = self.D.apply(d_vars, x, second, train=train, mutable=mutable)
        scores, new_state = out if mutable else (out, None)
        enc, gen = _split_scores(scores)
        return enc, gen, new_state

    def _d_scores_generated(self, d_vars, noise, x_fake):
        """D on generator pairs alone (the G update of ``x_only``: no loss reads a real score,
        so D runs forward and backward on half the batch). D is per-example (no batch
        statistics), so the scores equal those of the interleaved pass."""
        label = noise.get("y") if self.config.model.discriminator.num_classes > 0 else None
        return self.D.apply(d_vars, x_fake, label, train=False, mutable=False)

    def _generate(self, state, g_params, noise, mutable):
        g = self.G if mutable else self.G_keeps_state
        return g.apply(_variables(state, "G", g_params), noise["z"], noise.get("y"), train=True,
                       mutable=mutable)

    def _encode(self, state, e_params, real, noise, mutable):
        e = self.E if mutable else self.E_keeps_state
        return e.apply(_variables(state, "E", e_params), real["image_e"], train=True,
                       noise=noise["eps"], mutable=mutable)

    @_with_conv_weight_grad
    def d_update_on_pairs(self, state: TrainState, enc_pairs: tuple, gen_pairs: tuple
                          ) -> tuple[TrainState, dict]:
        """One D update on given encoder pairs (x, ẑ) and generator pairs (x̂, z).

        The D update of the step with the pairs made elsewhere: tests use it to train D alone on
        pairs whose answer is known (matched against shuffled).
        """

        def loss_fn(d_params):
            enc, gen, new_d_state = self._d_scores(
                _variables(state, "D", d_params), enc_pairs, gen_pairs,
                train=True, mutable=["spectral"])
            losses = bigbigan_losses(enc, gen, self.terms)
            return losses["d_loss"], (losses, new_d_state)

        grads, (losses, new_d_state) = jax.grad(loss_fn, has_aux=True)(state.params["D"])
        updates, opt = self.txs["D"].update(grads, state.opt_state["D"], state.params["D"])
        state = state.replace(
            params={**state.params, "D": optax.apply_updates(state.params["D"], updates)},
            opt_state={**state.opt_state, "D": opt},
            model_state={**state.model_state, "D": {**state.model_state["D"], **new_d_state}},
        )
        return state, {**losses, "grad_norm_D": optax.tree_utils.tree_norm(grads)}

    @_with_conv_weight_grad
    def d_update(self, state: TrainState, real: dict, noise: dict) -> tuple[TrainState, dict]:
        """One D update on the real batch against G's samples of ``noise``."""
        x_fake = self._generate(state, None, noise, mutable=False)
        z_hat = (self._encode(state, None, real, noise, mutable=False)["z_sample"] if self.E
                 else None)
        x_fake, z_hat = jax.lax.stop_gradient((x_fake, z_hat))
        second_enc, second_gen = self._pair_seconds(real, noise, z_hat)
        return self.d_update_on_pairs(state, (real["image_d"], second_enc), (x_fake, second_gen))

    def _ge_loss(self, state: TrainState, real: dict, noise: dict, ge_params: dict):
        """The joint G+E loss of ``ge_params``, with their new stored state and E's pooled
        features (for the online probe)."""
        x_fake, new_g = self._generate(state, ge_params["G"], noise,
                                       mutable=["batch_stats", "spectral"])
        new_states = {"G": new_g}
        z_hat = None
        feat = None
        if self.E is not None:
            enc_out, new_e = self._encode(state, ge_params["E"], real, noise,
                                          mutable=["batch_stats"])
            z_hat, new_states["E"] = enc_out["z_sample"], new_e
            feat = enc_out["avepool_feat"]
        if self.terms == "x_only":
            enc = None
            gen = self._d_scores_generated(_variables(state, "D"), noise, x_fake)
        else:
            second_enc, second_gen = self._pair_seconds(real, noise, z_hat)
            enc, gen, _ = self._d_scores(_variables(state, "D"), (real["image_d"], second_enc),
                                         (x_fake, second_gen), train=False, mutable=False)
        losses = bigbigan_losses(enc, gen, self.terms)
        total = losses["g_loss"] + losses.get("e_loss", 0.0)
        if self.t.ortho_reg_weight > 0:
            losses["ortho_reg_G"] = orthogonal_regularizer(ge_params["G"])
            total = total + self.t.ortho_reg_weight * losses["ortho_reg_G"]
        return total, (losses, new_states, feat)

    @_with_conv_weight_grad
    def ge_update(self, state: TrainState, real: dict, noise: dict) -> tuple[TrainState, dict]:
        """One joint G+E update (and the online probe's step on E's features)."""
        names = ["G", "E"] if self.E is not None else ["G"]
        loss_fn = functools.partial(self._ge_loss, state, real, noise)
        ge_params = {k: state.params[k] for k in names}
        grads, (losses, new_states, feat) = jax.grad(loss_fn, has_aux=True)(ge_params)
        params, opt_state, model_state = dict(state.params), dict(state.opt_state), dict(
            state.model_state)
        metrics = {}
        for k in names:
            updates, opt_state[k] = self.txs[k].update(grads[k], state.opt_state[k],
                                                       state.params[k])
            params[k] = optax.apply_updates(state.params[k], updates)
            model_state[k] = {**state.model_state[k], **new_states[k]}
            metrics[f"grad_norm_{k}"] = optax.tree_utils.tree_norm(grads[k])
        state = state.replace(params=params, opt_state=opt_state, model_state=model_state)
        if state.probe:
            state, probe_metrics = self._probe_update(state, jax.lax.stop_gradient(feat),
                                                      real["label"])
            metrics.update(probe_metrics)
        return state, {**losses, **metrics}

    def _probe_update(self, state: TrainState, feat: jax.Array, label: jax.Array
                      ) -> tuple[TrainState, dict]:
        """One step of the online linear probe on frozen features (reported before the step)."""

        def loss_fn(p):
            logits = feat @ p["kernel"] + p["bias"]
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, label).mean()
            return loss, logits

        p, opt = state.probe["params"], state.probe["opt_state"]
        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(p)
        updates, opt = self.probe_tx.update(grads, opt, p)
        top1 = jnp.mean((jnp.argmax(logits, -1) == label).astype(jnp.float32))
        new = {"params": optax.apply_updates(p, updates), "opt_state": opt}
        return state.replace(probe=new), {"online_probe_loss": loss,
                                          "online_probe_top1_train": top1}

    def train_step(self, state: TrainState, batch: Batch
                   ) -> tuple[TrainState, dict[str, jax.Array]]:
        """``n_d_steps`` D updates, one G+E update, then the EMA and the step count."""
        t, terms = self.t, self.terms
        key = jax.random.fold_in(state.base_key(), state.step)
        metrics: dict[str, jax.Array] = {}
        for i in range(t.n_d_steps):
            real = _real_view(batch, i)
            noise = self.draw(jax.random.fold_in(key, i), real["image_d"].shape[0])
            state, d_metrics = self.d_update(state, real, noise)
            # Report D's losses from its last update of the step (and, for x_only, whose G
            # update scores no real image, the real images' mean score from it too).
            metrics.update({k: v for k, v in d_metrics.items()
                            if k.startswith(("d_loss", "grad_norm"))
                            or (terms == "x_only" and k.endswith("_enc"))})
        real = _real_view(batch, t.n_d_steps - 1)
        noise = self.draw(jax.random.fold_in(key, t.n_d_steps), real["image_d"].shape[0])
        state, ge_metrics = self.ge_update(state, real, noise)
        metrics.update({k: v for k, v in ge_metrics.items() if not k.startswith("d_loss")})

        new_step = state.step + 1
        ema = {k: update_ema(state.ema_params[k], state.params[k], new_step, t.ema_decay,
                             t.ema_start_step)
               for k in ema_networks(self.config, state.params)}
        for k, sched in self.schedules.items():
            if k in state.params:
                metrics[f"lr_{k}"] = jnp.asarray(sched(state.step), jnp.float32)
        return state.replace(step=new_step, ema_params=ema), metrics


def jit_train_step(config: ml_collections.ConfigDict, mesh: Mesh
                   ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The step jitted over ``mesh``: state replicated and donated, batch split on ``data``."""
    step = make_train_step(config, mesh)
    rep = sharding.replicated(mesh)
    return jax.jit(step, in_shardings=(rep, sharding.batch_sharding(mesh, batch_axis=1)),
                   out_shardings=(rep, rep), donate_argnums=(0,))
