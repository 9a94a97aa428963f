"""Initialise G and E from the public API, sample images, encode them back to latents.

Run: python examples/sample_and_encode.py   (tiny widths: seconds on a CPU)
"""

import jax
import jax.numpy as jnp

from bbg_jax.models import Encoder, Generator

Z_DIM = 16  # hierarchical z at 32 px: 4 equal chunks (3 blocks + the first linear layer)

G = Generator(resolution=32, ch=4, z_dim=Z_DIM)
E = Encoder(trunk="resnet50", width=0.125, z_dim=Z_DIM, stage_depths=(1, 1, 1, 1),
            root="small", mlp_depth=1, mlp_width=32)

z = jax.random.normal(jax.random.key(0), (4, Z_DIM))
x0 = jnp.zeros((4, 32, 32, 3))
g_vars = G.init(jax.random.key(1), z, train=False)  # params, batch_stats, spectral
e_vars = E.init({"params": jax.random.key(2)}, x0, train=False, noise=jnp.zeros((4, Z_DIM)))
print("G collections:", sorted(g_vars), "E collections:", sorted(e_vars))

# Evaluation mode reads the stored batch-norm averages and spectral vectors; nothing is written.
images = G.apply(g_vars, z, train=False)
out = E.apply(e_vars, images, train=False, rngs={"noise": jax.random.key(3)})
print("images", images.shape, f"in [{float(images.min()):.2f}, {float(images.max()):.2f}]")
print("z_mean", out["z_mean"].shape, "features", out["avepool_feat"].shape)

# Training mode normalises with the batch's statistics and writes them: name the collections.
images, g_state = G.apply(g_vars, z, train=True, mutable=["batch_stats", "spectral"])
g_vars = {**g_vars, **g_state}
print("train-mode sample", images.shape, "updated", sorted(g_state))
