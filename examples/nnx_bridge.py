"""The same linen modules under Flax NNX, through ``flax.nnx.bridge.ToNNX``.

The wrapper holds the variables as NNX state; ``mutable=`` is passed at the call as with
``apply``, and the updated statistics are written back into the NNX module.
Run: python examples/nnx_bridge.py   (tiny widths: seconds on a CPU)
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bbg_jax.models import Encoder, Generator

Z_DIM = 16
z = jax.random.normal(jax.random.key(0), (4, Z_DIM))

G = nnx.bridge.ToNNX(Generator(resolution=32, ch=4, z_dim=Z_DIM), rngs=nnx.Rngs(0))
nnx.bridge.lazy_init(G, z, train=False)  # creates params, batch_stats, spectral
E = nnx.bridge.ToNNX(Encoder(trunk="resnet50", width=0.125, z_dim=Z_DIM,
                             stage_depths=(1, 1, 1, 1), root="small", mlp_depth=1,
                             mlp_width=32, stochastic=False), rngs=nnx.Rngs(1))
nnx.bridge.lazy_init(E, jnp.zeros((4, 32, 32, 3)), train=False)

images = G(z, train=False)
print("images", images.shape, "z_mean", E(images, train=False)["z_mean"].shape)

# A training pass writes statistics into the NNX state when the collections are mutable.
before = jax.tree.leaves(nnx.state(G, nnx.Not(nnx.Param)))
G(z, train=True, mutable=["batch_stats", "spectral"])
after = jax.tree.leaves(nnx.state(G, nnx.Not(nnx.Param)))
print("G state changed:", any(bool(jnp.any(a != b)) for a, b in zip(before, after, strict=True)))

# One NNX optimizer step on E's parameters alone (a new loss: unit-norm features).
opt = nnx.Optimizer(E, optax.adam(1e-3), wrt=nnx.Param)


def loss_fn(model):
    feats = model(images, train=True, mutable=["batch_stats"])["avepool_feat"]
    return jnp.mean(jnp.square(jnp.sum(feats ** 2, -1) - 1.0))


loss, grads = nnx.value_and_grad(loss_fn)(E)
opt.update(E, grads)
print(f"E feature-norm loss {float(loss):.4f}")
