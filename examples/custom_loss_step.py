"""A custom optax training step on a new loss: latent regression, E(G(z)) ≈ z.

Not BigBiGAN's adversarial game: a loss of one's own that reuses G and E, updates both with
optax, and keeps their batch-norm statistics and spectral-norm vectors as a training step must.
Run: python examples/custom_loss_step.py   (tiny widths, a few steps: seconds on a CPU)
"""

import jax
import jax.numpy as jnp
import optax

from bbg_jax.models import Encoder, Generator

Z_DIM, BATCH, STEPS = 16, 8, 5
G = Generator(resolution=32, ch=4, z_dim=Z_DIM)
E = Encoder(trunk="resnet50", width=0.125, z_dim=Z_DIM, stage_depths=(1, 1, 1, 1),
            root="small", mlp_depth=1, mlp_width=32, stochastic=False)

key = jax.random.key(0)
z0 = jnp.zeros((BATCH, Z_DIM))
variables = {"G": G.init(jax.random.key(1), z0, train=False),
             "E": E.init(jax.random.key(2), jnp.zeros((BATCH, 32, 32, 3)), train=False)}
params = {k: v["params"] for k, v in variables.items()}
state = {k: {c: s for c, s in v.items() if c != "params"} for k, v in variables.items()}
tx = optax.adam(1e-3)
opt_state = tx.init(params)


def loss_fn(params, state, z):
    # train=True writes statistics: mutable= names the collections, and the new state is kept.
    x, g_state = G.apply({"params": params["G"], **state["G"]}, z, train=True,
                         mutable=["batch_stats", "spectral"])
    out, e_state = E.apply({"params": params["E"], **state["E"]}, x, train=True,
                           mutable=["batch_stats"])
    loss = jnp.mean(jnp.square(out["z_mean"] - z))
    return loss, {"G": g_state, "E": e_state}


@jax.jit
def train_step(params, state, opt_state, key):
    z = jax.random.normal(key, (BATCH, Z_DIM))
    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, z)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_state, opt_state, loss


for step in range(STEPS):
    params, state, opt_state, loss = train_step(params, state, opt_state,
                                                jax.random.fold_in(key, step))
    print(f"step {step}: latent regression loss {float(loss):.4f}")
