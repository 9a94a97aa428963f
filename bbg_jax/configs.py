"""Config building blocks shared by the experiment files in experiments/.

Every experiment file defines ``get_config(arg=None)`` and starts from these defaults, so one
field means the same thing everywhere. Values marked [open] are not known from the paper
(the BigBiGAN and BigGAN papers) and are knobs with a stated default.
"""

from __future__ import annotations

import importlib.util
import numbers
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ml_collections


class ConfigError(ValueError):
    """A config value (or command-line argument) the code cannot run with.

    The message is one line that names the field, its value and what is allowed:
    ``train.prior='gaussian2': allowed 'gaussian', 'uniform'``. ``bbg_jax.main`` prints it as
    ``bbg_jax.main: <message>`` and exits non-zero; ``bbg_jax.config_checks`` raises it.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # one line, whatever the parts held


MISSING = object()  # a field absent from the config (an old config.json, a hand-edited file)


def show(value: Any) -> str:
    """A value as the messages print it: strings quoted, sequences as tuples."""
    if value is MISSING:
        return "<missing>"
    if isinstance(value, list):
        value = tuple(value)
    return repr(value)


def config_error(field: str, value: Any, allowed: str, why: str = "") -> ConfigError:
    """``field=value: allowed ALLOWED (WHY)``; ``field is missing: ...`` for ``MISSING``."""
    head = f"{field} is missing" if value is MISSING else f"{field}={show(value)}"
    return ConfigError(f"{head}: allowed {allowed}" + (f" ({why})" if why else ""))


def check_choice(field: str, value: Any, choices: Iterable[Any], why: str = "") -> None:
    choices = tuple(choices)
    # Same type and equal: True is not 1, 3.0 is not 3, and a list is no string.
    if not any(type(value) is type(c) and value == c for c in choices):
        raise config_error(field, value, ", ".join(show(c) for c in choices), why)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(field: str, value: Any, minimum: int | None = None, why: str = "") -> None:
    if not _is_int(value) or (minimum is not None and value < minimum):
        allowed = "an integer" + ("" if minimum is None else f" >= {minimum}")
        raise config_error(field, value, allowed, why)


def check_number(field: str, value: Any, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, why: str = "") -> None:
    """A real number in the interval given by ``low``/``high`` (closed unless ``*_open``)."""
    ok = _is_number(value) and value == value  # NaN is no number here
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if low is not None and high is not None:
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            allowed = f"a number in {left}{low:g}, {high:g}{right}"
        elif low is not None:
            allowed = f"a number {'>' if low_open else '>='} {low:g}"
        elif high is not None:
            allowed = f"a number {'<' if high_open else '<='} {high:g}"
        else:
            allowed = "a number"
        raise config_error(field, value, allowed, why)


def get_field(section: Any, key: str, default: Any = MISSING) -> Any:
    """``section[key]`` (``default`` where absent); ``MISSING`` where ``section`` is no section."""
    return section.get(key, default) if hasattr(section, "get") else MISSING


def check_int_sequence(field: str, value: Any, minimum: int, length: int | None = None,
                        optional: bool = True) -> None:
    if optional and value is None:
        return
    ok = (isinstance(value, (list, tuple)) and (length is None or len(value) == length)
          and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum
                  for v in value))
    if not ok:
        what = f"{length} integers" if length else "integers"
        raise config_error(field, value, f"a tuple of {what} >= {minimum}"
                           + (" or None" if optional else ""))


def check_bool(field: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise config_error(field, value, "True, False")


def check_str(field: str, value: Any, optional: bool = False, allowed: str = "a string") -> None:
    if not (isinstance(value, str) or (optional and value is None)):
        raise config_error(field, value, allowed + (" or None" if optional else ""))


def model_config(resolution: int = 128, ch: int = 96, z_dim: int = 120
                 ) -> ml_collections.ConfigDict:
    """The BigBiGAN model section at a given G/D resolution (ResNet-50 E at the same resolution)."""
    import ml_collections  # here, not at the top: the train step imports this module without it

    m = ml_collections.ConfigDict()
    m.dtype = "float32"
    m.z_dim = z_dim
    m.image_channels = 3
    m.bn_eps = 1e-4  # BigGAN / released BigBiGAN
    m.sn_eps = 1e-4
    # Self-attention as the explicit softmax(θφᵀ)·g ("einsum") or through
    # jax.nn.dot_product_attention with θ and φ copied to 4 heads ("dot_product": 4 times the
    # logits; XLA's path, which jax 0.10 takes unless told to use cuDNN). Same parameters and
    # maths; for the BigBiGAN-128 step on v5p, einsum needs 19.5 GiB per chip against 49.8
    # (docs/paper_configs.md).
    m.attention_impl = "einsum"
    # Networks whose residual blocks are rematerialised (recomputed in the backward pass):
    # less activation memory for more compute; e.g. ("G", "E"). Same parameters and maths.
    m.remat = ()
    # Batch norm in G and E over the whole global batch (1, cross-replica) or over this many
    # consecutive slices of it (groups of devices when the batch is split over the mesh).
    m.bn_groups = 1

    m.generator = ml_collections.ConfigDict()
    g = m.generator
    g.resolution = resolution
    g.ch = ch
    g.conditioning = "single"  # BigBiGAN: one learned label embedding
    g.num_classes = 1000  # only read when conditioning == "class"
    g.embed_dim = 128
    g.hierarchical_z = True
    # Without hierarchical z: the whole z conditions every block's BN beside the embedding
    # (compare_gan), or only the first linear layer (False: BigGAN-PyTorch without --hier).
    g.z_in_blocks = True
    g.attention_resolutions = ml_collections.FieldReference(None, field_type=tuple)
    g.deep = False
    g.bn_momentum = 0.99  # [open]; G is evaluated with standing statistics anyway
    # Conditional BN maps W_γ, W_β: "orthogonal" + spectral norm (BigGAN-PyTorch, compare_gan),
    # or "zeros" (CBN = BN at initialisation: G then ignores all z chunks but the first).
    g.cbn_map_init = "orthogonal"
    # conditioning="single": the one label's embedding, unit norm ("orthogonal", as the
    # references) or N(0, 1) per entry ("normal": ≈ 11 times the norm at embed_dim 128).
    g.single_embed_init = "orthogonal"

    m.discriminator = ml_collections.ConfigDict()
    d = m.discriminator
    d.kind = "bigbigan"
    d.resolution = resolution
    d.ch = ch
    d.deep = False
    d.attention_resolutions = ml_collections.FieldReference(None, field_type=tuple)
    # BigGAN trunk only: which blocks downsample (None: all but the last, the published plan)
    # and where a 1x1 shortcut conv replaces the identity: "channels" (where the channel count
    # changes, compare_gan) or "channels_or_down" (also when downsampling, BigGAN-PyTorch).
    d.downsample = ml_collections.FieldReference(None, field_type=tuple)
    d.conv_shortcut = "channels"
    d.mlp_depth = 8  # H and J: [likely, open] 8 layers x 2048 with skip connections
    d.mlp_width = 2048
    d.num_classes = 0  # projection discriminator when kind == "gan" and > 0
    # The paper's s_xz: J on concat[F(x), H(z)] alone. "feature_map" / "image" add a bilinear
    # term between F's unpooled map / D's input pixels and H(z) (departures; docs/departures.md).
    d.joint_projection = "none"

    m.encoder = ml_collections.ConfigDict()
    e = m.encoder
    e.enabled = True
    e.trunk = "resnet50"
    e.width = 1.0  # float: fractional widths (0.5, 0.25) are allowed
    e.resolution = resolution  # 2 x resolution for the "high resolution E" runs
    e.mlp_depth = 4  # head: [likely, open] 4 layers x 4096 with skip connections
    e.mlp_width = 4096
    e.stochastic = True
    e.bn_momentum = 0.9
    e.bn_eps = 1e-5
    e.stage_depths = ml_collections.FieldReference(None, field_type=tuple)
    e.root = "imagenet"  # or "small": 3x3/1 root conv, no pool (28-32 px images)
    # RevNet trunks: backprop by reconstructing each unit's input from its output, so that
    # activation memory does not grow with depth (one more F evaluation per unit).
    e.reversible_backprop = False
    return m


def biggan_model(resolution: int = 128, ch: int = 96, z_dim: int = 120,
                 num_classes: int = 1000) -> ml_collections.ConfigDict:
    """Class-conditional BigGAN: class embedding in G, projection D, no encoder."""
    m = model_config(resolution, ch, z_dim)
    m.generator.conditioning = "class"
    m.generator.num_classes = num_classes
    m.discriminator.kind = "gan"
    m.discriminator.num_classes = num_classes
    m.encoder.enabled = False
    return m


def train_config() -> ml_collections.ConfigDict:
    """The optimisation section (BigGAN's settings). Durations are in G/E steps."""
    import ml_collections

    t = ml_collections.ConfigDict()
    t.seed = 0
    t.num_steps = 500_000  # ablations; 1M for the final models [likely]
    t.n_d_steps = 2  # D updates per G/E update: BigGAN's; [open] for BigBiGAN
    t.lr_g = 5e-5  # BigGAN's G rate [sure for BigGAN, open for BigBiGAN]
    t.lr_d = 2e-4
    t.e_lr_multiplier = 1.0  # E at G's rate; 10 in the "up E LR" runs [likely]
    t.warmup_steps = 0
    t.adam_b1 = 0.0  # BigGAN [likely]
    t.adam_b2 = 0.999
    t.adam_eps = 1e-6  # [open]: BigGAN-PyTorch's value
    t.ortho_reg_weight = 0.0  # BigGAN uses 1e-4; [open] for BigBiGAN, so off
    t.ema_decay = 0.9999
    t.ema_start_step = 20_000  # BigGAN-PyTorch's start
    t.ema_encoder = False
    t.loss_terms = "all"  # see bbg_jax.losses.TERMS for the ablations
    t.prior = "gaussian"  # or "uniform"
    t.log_every = 100
    t.checkpoint_every = 1000
    t.keep_last = 3  # checkpoints: the last N ...
    t.keep_every = 50_000  # ... plus every K-th step
    t.init_from = ""  # a checkpoint directory whose parameters start a fresh run
    # Resume a checkpoint written by another number of processes: a TFDS stream is per
    # process, so the data order changes from there (bbg_jax.loop.check_data_processes).
    t.allow_data_reshard = False
    # Write checkpoints in the background (waited for before an evaluation, at preemption and
    # at exit); off: each save is complete when the step after it starts.
    t.async_checkpointing = False
    # JAX's persistent compilation cache, so a restarted job skips its compiles: a directory
    # (gs:// allowed), "WORKDIR/..." for one under the workdir, or "" for none.
    t.compilation_cache_dir = "WORKDIR/compilation_cache"
    # Online linear probe on stop-gradient avepool_feat (BYOL-style monitor; never touches E).
    t.online_probe_classes = 0  # the dataset's class count; 0 = off
    t.online_probe_lr = 1e-3
    # Convolution weight gradients: "xla", "einsum" (k*k matmuls; ~6x faster on XLA:CPU), or
    # "auto" = einsum on CPU, XLA on GPU/TPU (bbg_jax/models/conv.py).
    t.conv_weight_grad = "auto"
    return t


def load_experiment(spec: str) -> ml_collections.ConfigDict:
    """Loads ``path/to/experiment.py[:arg]`` as ``--config=`` does (for tests and notebooks)."""
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise FileNotFoundError(f"No experiment config at {path!r} (expected a .py file).")
    module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
