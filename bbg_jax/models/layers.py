"""Building blocks shared by G, E and D.

Variable collections:

* ``params``      -- trainable weights, created in ``param_dtype`` (float32 by default).
* ``batch_stats`` -- running means/variances of batch norm, float32.
* ``spectral``    -- spectral normalisation's state, float32: for each normalised weight, a
  ``SpectralNormParam`` submodule named ``sn`` beside the weight holds ``u`` (the power-iteration
  estimate of the top right singular vector, shape (out,)) and ``sigma`` (the last estimate of the
  top singular value, for monitoring).

Every stateful layer takes ``train``: with ``train=True`` batch norm normalises with the batch's
statistics and spectral norm runs one power iteration (Miyato et al., 2018; BigGAN, Brock et al.
2018, section 4); with ``train=False`` batch norm uses its running averages and spectral norm runs
none. A training pass writes the new state, so its collection must be mutable: ``.apply(...,
train=True)`` without ``mutable=["batch_stats", "spectral"]`` (those the module has) raises
``StateNotMutableError`` rather than dropping the update silently. A pass that must compute with
batch statistics but keep the stored state (the trainer's D update runs G and E this way; the
G/E update stores their state) sets the layer field ``update_state=False``.

Compute dtype: layers take ``dtype`` (float32 or bfloat16) for their matmuls/convolutions;
statistics and the spectral-norm arithmetic stay float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bbg_jax.models.conv import conv2d

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]

SPECTRAL = "spectral"
BATCH_STATS = "batch_stats"

orthogonal_init = nn.initializers.orthogonal()


class StateNotMutableError(ValueError):
    """A training pass (``train=True``) of a stateful layer whose collection is immutable."""


def check_state_writable(module: nn.Module, collection: str, update_state: bool) -> bool:
    """Whether ``module`` (running with train=True) should write ``collection``.

    At init nothing is written; with ``update_state=False`` nothing is, by request; otherwise the
    collection must be mutable, or this raises instead of dropping the update silently.
    """
    if module.is_initializing() or not update_state:
        return False
    if module.is_mutable_collection(collection):
        return True
    path = "/".join(module.scope.path) if module.scope is not None else type(module).__name__
    raise StateNotMutableError(
        f"{type(module).__name__} at {path!r} ran with train=True, which updates the "
        f"{collection!r} collection, but {collection!r} is not mutable, so the update would be "
        f"lost. Pass mutable=[{BATCH_STATS!r}, {SPECTRAL!r}] (the collections the model has) to "
        "apply() and keep the returned state; or pass train=False to use the stored state; or "
        "set update_state=False on the module for a pass that computes with batch statistics "
        "but deliberately keeps the stored state."
    )


def _l2_normalize(x: Array, eps: float) -> Array:
    # x / max(||x||, eps): exact for any non-degenerate vector; eps only guards against 0.
    return x / jnp.maximum(jnp.linalg.norm(x), eps)


def spectral_normalize(
    kernel: Array, u: Array, *, n_iterations: int, eps: float
) -> tuple[Array, Array, Array]:
    """Divides ``kernel`` by an estimate of its largest singular value.

    The kernel is viewed as a matrix W of shape (fan_in, out) (all axes but the last flattened);
    ``u`` (shape (out,)) estimates W's top right singular vector. Each power iteration does
    v = W u / |W u|, u = Wᵀ v / |Wᵀ v|; then σ = |W u|. The vectors are constants for the gradient
    (as in Miyato et al. and BigGAN), so the gradient flows through W in σ = vᵀ W u only.

    Returns (normalised kernel, new u, sigma).
    """
    w = kernel.reshape(-1, kernel.shape[-1]).astype(jnp.float32)
    u = jax.lax.stop_gradient(u)
    w_const = jax.lax.stop_gradient(w)
    for _ in range(n_iterations):
        v = _l2_normalize(w_const @ u, eps)
        u = _l2_normalize(w_const.T @ v, eps)
    sigma = jnp.linalg.norm(w @ u)
    return kernel / sigma.astype(kernel.dtype), u, sigma


class SpectralNormParam(nn.Module):
    """Holds the power-iteration vector of one weight and normalises that weight.

    ``n_power_iterations`` iterations run per training call (BigGAN: 1), none at evaluation.
    Collections: reads and, with ``train=True``, writes ``spectral`` (``u``, ``sigma``); see
    ``check_state_writable`` for ``update_state``.
    """

    eps: float = 1e-4
    n_power_iterations: int = 1
    update_state: bool = True

    @nn.compact
    def __call__(self, kernel: Array, train: bool) -> Array:
        out = kernel.shape[-1]

        def init_u():
            key = self.make_rng("params")
            return _l2_normalize(jax.random.normal(key, (out,), jnp.float32), self.eps)

        u = self.variable(SPECTRAL, "u", init_u)
        sigma_var = self.variable(SPECTRAL, "sigma", lambda: jnp.ones((), jnp.float32))
        n_iter = self.n_power_iterations if train else 0
        w_sn, u_new, sigma = spectral_normalize(
            kernel, u.value, n_iterations=n_iter, eps=self.eps
        )
        if train and check_state_writable(self, SPECTRAL, self.update_state):
            u.value = u_new
            sigma_var.value = jax.lax.stop_gradient(sigma)
        return w_sn


class SNDense(nn.Module):
    """Dense layer with optional spectral normalisation of its kernel.

    ``(x (..., in), train) -> (..., features)`` in ``dtype``. Collections: ``params``
    (kernel, bias); ``spectral`` when ``spectral_norm``.
    """

    features: int
    use_bias: bool = True
    spectral_norm: bool = True
    sn_eps: float = 1e-4
    kernel_init: Initializer = orthogonal_init
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    update_state: bool = True

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                            self.param_dtype)
        if self.spectral_norm:
            kernel = SpectralNormParam(eps=self.sn_eps, update_state=self.update_state,
                                       name="sn")(kernel, train)
        y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


class SNConv(nn.Module):
    """2-D convolution (NHWC, SAME padding) with optional spectral normalisation.

    ``(x (N, H, W, C), train) -> (N, H/strides, W/strides, features)`` in ``dtype``.
    Collections: ``params`` (kernel, bias); ``spectral`` when ``spectral_norm``.
    ``conv_impl``: see ``bbg_jax.models.conv`` (None: the ``weight_grad`` context's choice).
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    use_bias: bool = True
    spectral_norm: bool = True
    sn_eps: float = 1e-4
    kernel_init: Initializer = orthogonal_init
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    update_state: bool = True
    conv_impl: str | None = None

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features),
                            self.param_dtype)
        if self.spectral_norm:
            kernel = SpectralNormParam(eps=self.sn_eps, update_state=self.update_state,
                                       name="sn")(kernel, train)
        y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype),
                   (self.strides, self.strides), "SAME", impl=self.conv_impl)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


def batch_moments(x: Array, axis_name: str | None) -> tuple[Array, Array]:
    """Per-channel mean and variance over all axes but the last, in float32.

    Under ``jax.jit`` with the batch sharded over a mesh the mean over the (global) batch axis is
    already cross-replica. ``axis_name`` is for use inside ``shard_map``, where each device sees
    its shard only and the moments are averaged over that named axis.
    """
    x32 = x.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x32, axes)
    mean_sq = jnp.mean(jnp.square(x32), axes)
    if axis_name is not None:
        mean, mean_sq = jax.lax.pmean((mean, mean_sq), axis_name)
    var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
    return mean, var


class _Normalizer(nn.Module):
    """Shared statistics logic: batch moments in training, running averages at evaluation."""

    momentum: float = 0.99
    eps: float = 1e-4
    axis_name: str | None = None
    groups: int = 1
    update_state: bool = True

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        c = x.shape[-1]
        ra_mean = self.variable(BATCH_STATS, "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable(BATCH_STATS, "var", lambda: jnp.ones((c,), jnp.float32))
        if not train:
            inv = jax.lax.rsqrt(ra_var.value + self.eps)
            return (x.astype(jnp.float32) - ra_mean.value) * inv
        n = x.shape[0]
        if self.groups < 1 or n % self.groups:
            raise ValueError(f"Batch norm groups={self.groups} must divide the batch ({n}): "
                             "set model.bn_groups to a divisor of the global batch.")
        # Grouped BN: consecutive slices of the (global) batch are normalised separately; with
        # the batch split over the mesh, a group is a block of devices. groups=1: global BN.
        xg = x.reshape(self.groups, n // self.groups, *x.shape[1:])
        mean, var = jax.vmap(lambda t: batch_moments(t, self.axis_name))(xg)  # [groups, C]
        if check_state_writable(self, BATCH_STATS, self.update_state):
            m = self.momentum
            ra_mean.value = m * ra_mean.value + (1 - m) * jnp.mean(mean, 0)
            ra_var.value = m * ra_var.value + (1 - m) * jnp.mean(var, 0)
        expand = (slice(None), None) + (None,) * (x.ndim - 2)
        y = (xg.astype(jnp.float32) - mean[expand]) * jax.lax.rsqrt(var[expand] + self.eps)
        return y.reshape(x.shape)


class BatchNorm(nn.Module):
    """Batch norm with optional learned scale/offset (used by E, and G's last layer).

    ``(x (..., C), train) -> same shape`` in ``dtype``. Collections: ``params`` (scale, bias);
    ``batch_stats`` (``norm/mean``, ``norm/var``), written when ``train=True`` (see
    ``check_state_writable``).
    """

    use_scale: bool = True
    use_bias: bool = True
    momentum: float = 0.99
    eps: float = 1e-4
    axis_name: str | None = None
    groups: int = 1  # >1: grouped BN over consecutive batch slices (see _Normalizer)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    update_state: bool = True

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        c = x.shape[-1]
        y = _Normalizer(self.momentum, self.eps, self.axis_name, self.groups,
                        update_state=self.update_state, name="norm")(x, train)
        if self.use_scale:
            y = y * self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        return y.astype(self.dtype)


CBN_MAP_INITS = ("orthogonal", "zeros")


class ConditionalBatchNorm(nn.Module):
    """BigGAN's conditional batch norm: y = x̂ · (1 + W_γ c) + W_β c.

    x̂ is x normalised without an affine transform; W_γ and W_β are bias-free linear maps of the
    conditioning vector c. ``map_init`` says how they start:

    * ``"orthogonal"`` (BigGAN-PyTorch's ``ccbn`` and compare_gan): orthogonally initialised and
      spectrally normalised like every other weight of G, so each z chunk in c changes every
      block's gain and bias from the first step (with the "+1" on the gain, which compare_gan
      shipped without).
    * ``"zeros"``: zero-initialised and not normalised, so the layer equals plain batch norm at
      initialisation. With hierarchical z this makes G ignore every z chunk but the first at
      initialisation, and those chunks stay nearly unused through training, which leaves
      them invisible to D and unrecoverable by E (docs/fashion_mnist.md, "Why the joint term
      was silent"); kept for comparison with earlier runs.
    """

    momentum: float = 0.99
    eps: float = 1e-4
    axis_name: str | None = None
    groups: int = 1  # >1: grouped BN over consecutive batch slices (see _Normalizer)
    map_init: str = "orthogonal"  # see CBN_MAP_INITS
    sn_eps: float = 1e-4
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    update_state: bool = True

    @nn.compact
    def __call__(self, x: Array, cond: Array, train: bool = True) -> Array:
        if self.map_init not in CBN_MAP_INITS:
            raise ValueError(f"ConditionalBatchNorm map_init={self.map_init!r}; use one of "
                             f"{CBN_MAP_INITS}.")
        c = x.shape[-1]
        y = _Normalizer(self.momentum, self.eps, self.axis_name, self.groups,
                        update_state=self.update_state, name="norm")(x, train)
        orthogonal = self.map_init == "orthogonal"
        dense = lambda name: SNDense(  # noqa: E731
            c, use_bias=False, spectral_norm=orthogonal, sn_eps=self.sn_eps,
            kernel_init=orthogonal_init if orthogonal else nn.initializers.zeros,
            dtype=jnp.float32, param_dtype=self.param_dtype, update_state=self.update_state,
            name=name)
        cond = cond.astype(jnp.float32)
        gain = 1.0 + dense("gamma")(cond, train)
        bias = dense("beta")(cond, train)
        expand = (slice(None),) + (None,) * (x.ndim - 2) + (slice(None),)
        return (y * gain[expand] + bias[expand]).astype(self.dtype)


ATTENTION_IMPLS = ("dot_product", "einsum")


def maybe_remat(block: type[nn.Module], enabled: bool, train_argnum: int) -> type[nn.Module]:
    """``block`` rematerialised (activations recomputed in the backward pass) when enabled.

    ``train_argnum`` is the position of the boolean ``train`` argument in ``__call__`` counting
    ``self`` as 0: it must be static under ``jax.checkpoint``.
    """
    return nn.remat(block, static_argnums=(train_argnum,)) if enabled else block


class SelfAttention(nn.Module):
    """SAGAN self-attention (the "non-local block" of BigGAN).

    θ: 1×1 conv to C/8; φ: 1×1 conv to C/8 then 2×2 max-pool; g: 1×1 conv to C/2 then 2×2 max-pool;
    attention = softmax(θ φᵀ) (no 1/√d scaling, as in SAGAN/BigGAN); output 1×1 conv back to C,
    scaled by a learned γ initialised to 0, added to the input. All convolutions are bias-free and
    spectrally normalised.
    """

    spectral_norm: bool = True
    sn_eps: float = 1e-4
    dtype: Dtype = jnp.float32
    impl: str = "einsum"  # the explicit softmax(θφᵀ)·g; or "dot_product" (below)
    param_dtype: Dtype = jnp.float32
    update_state: bool = True
    conv_impl: str | None = None

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        n, h, w, c = x.shape
        if c % 8:
            raise ValueError(f"SelfAttention needs channels divisible by 8, got {c}.")
        conv = lambda f, name: SNConv(  # noqa: E731
            f, kernel_size=1, use_bias=False, spectral_norm=self.spectral_norm,
            sn_eps=self.sn_eps, dtype=self.dtype, param_dtype=self.param_dtype,
            update_state=self.update_state, conv_impl=self.conv_impl, name=name,
        )
        pool = lambda t: nn.max_pool(t, (2, 2), strides=(2, 2))  # noqa: E731
        theta = conv(c // 8, "theta")(x, train).reshape(n, h * w, c // 8)
        phi = pool(conv(c // 8, "phi")(x, train)).reshape(n, -1, c // 8)
        g = pool(conv(c // 2, "g")(x, train)).reshape(n, -1, c // 2)
        if self.impl == "dot_product":
            # jax.nn.dot_product_attention wants equal head widths for keys and values: g's C/2
            # channels become 4 heads of C/8 that share θ and φ, which gives the same
            # softmax(θφᵀ)·g with 4 copies of the logits (jax 0.10 runs XLA's path here unless
            # asked for cuDNN, so nothing fuses them away).
            heads = 4
            q = jnp.broadcast_to(theta[:, :, None], (n, h * w, heads, c // 8))
            k = jnp.broadcast_to(phi[:, :, None], (n, phi.shape[1], heads, c // 8))
            v = g.reshape(n, -1, heads, c // 8)
            o = jax.nn.dot_product_attention(q, k, v, scale=1.0).reshape(n, h, w, c // 2)
        elif self.impl == "einsum":
            logits = jnp.einsum("nqd,nkd->nqk", theta, phi).astype(jnp.float32)
            attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
            o = jnp.einsum("nqk,nkd->nqd", attn, g).reshape(n, h, w, c // 2)
        else:
            raise ValueError(f"SelfAttention impl={self.impl!r}; use one of {ATTENTION_IMPLS}.")
        o = conv(c, "out")(o, train)
        gamma = self.param("gamma", nn.initializers.zeros, (), self.param_dtype)
        return (x + gamma.astype(self.dtype) * o).astype(self.dtype)


class ResidualMLP(nn.Module):
    """An MLP of ``depth`` linear layers of ``width`` units with identity skip connections.

    Layer 1 projects the input to ``width``; each further layer is a pre-activation residual
    update h ← h + W·relu(h) + b. The output is relu(h), the feature a linear head reads. This is
    the "skip-connection MLP" of H, J (BigBiGAN D) and of the encoder head; depth and width are
    [open] in the paper and come from config.
    """

    depth: int
    width: int
    spectral_norm: bool = False
    sn_eps: float = 1e-4
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    update_state: bool = True

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        if self.depth < 1:
            raise ValueError(f"ResidualMLP depth must be >= 1, got {self.depth}.")
        dense = lambda name: SNDense(  # noqa: E731
            self.width, spectral_norm=self.spectral_norm, sn_eps=self.sn_eps,
            dtype=self.dtype, param_dtype=self.param_dtype, update_state=self.update_state,
            name=name,
        )
        h = dense("dense_0")(x, train)
        for i in range(1, self.depth):
            h = h + dense(f"dense_{i}")(nn.relu(h), train)
        return nn.relu(h)


def _is_regularised(path: Sequence[Any], leaf: Array, exclude: Sequence[str]) -> bool:
    names = [getattr(p, "key", getattr(p, "name", str(p))) for p in path]
    return (
        leaf.ndim >= 2
        and names[-1] == "kernel"
        and not any(str(n) in exclude for n in names)
    )


def orthogonal_regularizer(params: Any, exclude: Sequence[str] = ("embed",)) -> Array:
    """BigGAN's orthogonal regulariser Σ_W ‖WᵀW ⊙ (1 − I)‖²_F (multiply by β, 1e-4 in BigGAN).

    Applies to every ``kernel`` with two or more axes, each viewed as (fan_in, out), so WᵀW is the
    Gram matrix of the output filters. Parameters whose path contains a name in ``exclude``
    (class/label embeddings, as BigGAN-PyTorch exempts its shared embedding) are skipped.
    """
    total = jnp.zeros((), jnp.float32)
    for path, leaf in jax.tree.flatten_with_path(params)[0]:
        if _is_regularised(path, leaf, exclude):
            w = leaf.reshape(-1, leaf.shape[-1]).astype(jnp.float32)
            gram = w.T @ w
            off_diag = gram * (1.0 - jnp.eye(gram.shape[0], dtype=gram.dtype))
            total = total + jnp.sum(jnp.square(off_diag))
    return total
