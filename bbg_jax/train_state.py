"""The train state: one pytree holding everything a step reads or writes.

``TrainState``
  step         number of completed G/E updates (each preceded by ``n_d_steps`` D updates)
  params       {"G", "D"} and "E" when the encoder is enabled; float32
  model_state  per network, its non-parameter collections: G {batch_stats, spectral},
               E {batch_stats}, D {spectral}
  opt_state    per network, its optax state (Adam moments float32)
  ema_params   exponential moving averages of G's (and optionally E's) parameters
  probe        the online linear probe (BYOL-style): {"params", "opt_state"}, empty when off
  rng          the base key's raw data, uint32[2] (``jax.random.key_data``: a checkpoint holds
               plain arrays); step s uses fold_in(base_key(), s), so nothing random depends on
               history
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import flax
import jax
import jax.numpy as jnp
import optax

from bbg_jax.configs import MISSING, check_bool, check_choice, config_error
from bbg_jax.losses import TERMS
from bbg_jax.models import init_variables

if TYPE_CHECKING:  # annotations only: the step runs without ml_collections
    import ml_collections

PyTree = Any


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict[str, PyTree]
    model_state: dict[str, PyTree]
    opt_state: dict[str, PyTree]
    ema_params: dict[str, PyTree]
    probe: dict[str, PyTree]
    rng: jax.Array  # uint32[2]: jax.random.key_data of the base key

    def base_key(self) -> jax.Array:
        """The base key, a typed key (``jax.random.key``) wrapping ``rng``."""
        return jax.random.wrap_key_data(self.rng)


def learning_rates(config: ml_collections.ConfigDict) -> dict[str, float]:
    """Peak learning rate per network; E's is a multiple of G's (the "↑ E LR" runs use 10)."""
    t = config.train
    return {"G": t.lr_g, "D": t.lr_d, "E": t.lr_g * t.e_lr_multiplier}


def lr_schedule(peak: float, warmup_steps: int) -> optax.Schedule:
    """Linear warm-up over ``warmup_steps`` G/E steps, then constant (BigGAN uses none)."""
    if warmup_steps <= 0:
        return optax.constant_schedule(peak)
    return optax.linear_schedule(0.0, peak, warmup_steps)


def make_optimizers(config: ml_collections.ConfigDict, names: list[str]
                    ) -> dict[str, optax.GradientTransformation]:
    """Adam(β1 = 0, β2 = 0.999) per network with its own learning rate and a shared ε.

    Optax counts D's own updates, ``n_d_steps`` per G/E step; D's schedule divides that count so
    that every warm-up is measured in G/E steps.
    """
    t = config.train
    peaks = learning_rates(config)
    txs = {}
    for name in names:
        sched = lr_schedule(peaks[name], t.warmup_steps)
        if name == "D":
            per_g_step = t.n_d_steps
            sched = (lambda s, f=sched, k=per_g_step: f(s // k))  # noqa: E731
        txs[name] = optax.adam(sched, b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps)
    return txs


def probe_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    return optax.adam(config.train.online_probe_lr)


def init_probe(config: ml_collections.ConfigDict, feature_dim: int) -> dict[str, PyTree]:
    """A zero-initialised linear softmax classifier on E's avepool_feat (off when 0 classes)."""
    n = config.train.online_probe_classes
    if n <= 0 or not config.model.encoder.enabled:
        return {}
    params = {"kernel": jnp.zeros((feature_dim, n), jnp.float32),
              "bias": jnp.zeros((n,), jnp.float32)}
    return {"params": params, "opt_state": probe_optimizer(config).init(params)}


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array) -> TrainState:
    """Initialises every network and optimizer from ``rng`` (``jax.random.key(seed)``). Works
    under ``jax.eval_shape`` too."""
    init_rng, state_rng = jax.random.split(rng)
    variables = init_variables(config, init_rng, batch=2)
    params = {k: v["params"] for k, v in variables.items()}
    model_state = {k: {c: s for c, s in v.items() if c != "params"} for k, v in variables.items()}
    txs = make_optimizers(config, sorted(params))
    opt_state = {k: txs[k].init(params[k]) for k in params}
    ema_names = ema_networks(config, params)
    # A copy, not an alias: the step donates the state, and one buffer cannot be donated twice.
    ema_params = {k: jax.tree.map(jnp.copy, params[k]) for k in ema_names}
    probe = {}
    if "E" in params:
        feature_dim = params["E"]["head_mlp"]["dense_0"]["kernel"].shape[0]
        probe = init_probe(config, feature_dim)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                      opt_state=opt_state, ema_params=ema_params, probe=probe,
                      rng=jax.random.key_data(state_rng))


def ema_networks(config: ml_collections.ConfigDict, params: dict[str, PyTree]) -> list[str]:
    names = ["G"]
    if config.train.ema_encoder and "E" in params:
        names.append("E")
    return names


def update_ema(ema: PyTree, params: PyTree, step: jax.Array, decay: float, start_step: int
               ) -> PyTree:
    """EMA with ``decay``, starting at ``start_step``; before it the average tracks the weights
    (BigGAN-PyTorch starts at 20k steps, so early averages don't remember the initialisation)."""
    d = jnp.where(step >= start_step, decay, 0.0)
    return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)


def check_networks(config: ml_collections.ConfigDict) -> None:
    """Fails early, with the fix, on a model/loss combination the step cannot train.

    Raises ``ConfigError``: one line naming the field, its value and what is allowed.
    """
    terms = config.train.get("loss_terms", MISSING)
    check_choice("train.loss_terms", terms, TERMS)
    has_e = config.model.encoder.get("enabled", MISSING)
    check_bool("model.encoder.enabled", has_e)
    if has_e and terms == "x_only":
        raise config_error("train.loss_terms", terms,
                           ", ".join(repr(t) for t in TERMS if t != "x_only"),
                           "model.encoder.enabled=True: E trains only through the joint or "
                           "z terms; 'x_only' is the plain GAN, with the encoder disabled")
    if not has_e and terms != "x_only":
        raise config_error("train.loss_terms", terms, "'x_only'",
                           "model.encoder.enabled=False: BigBiGAN terms need the encoder; "
                           "a plain GAN (no encoder, discriminator.kind='gan') uses 'x_only'")
