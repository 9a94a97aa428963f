"""Times BigGAN-PyTorch's own training iteration on the CPU (the peer half of
``scripts/vs_biggan_pytorch.py``; runs under a Python with torch, not bbg-jax's).

    TORCH_PYTHON scripts/biggan_pytorch_iteration.py PEER_DIR [key=value ...] [--dry_run]
        [--count]

PEER_DIR is a checkout of ajbrock/BigGAN-PyTorch (MIT; never copied into this project). Its
``train_fns.GAN_training_function`` is timed as ``train.py`` calls it: ``num_D_steps`` D updates
on real and generated batches, one G update, the EMA of G. Settings default to
``scripts/launch_cifar_ema.sh``'s CIFAR-10 model (G_ch = D_ch = 64, dim_z 128, 32 px, no
attention, 10 classes). The peer's own dependencies (torchvision, h5py, tqdm, pillow) must be
installed. Prints one JSON line. ``--dry_run`` prints the settings and what this Python and
PEER_DIR hold (torch importable? the peer's modules present?) as that line, without torch.
``--count`` prints the models' parameter counts and analytic forward FLOPs per image (2 per
multiply-add of every convolution and linear layer, as ``bbg_jax.flops`` counts) and times
nothing.
"""

import json
import os
import statistics
import sys
import time

SETTINGS = {"batch": 50, "num_D_steps": 1, "G_ch": 64, "D_ch": 64, "dim_z": 128,
            "resolution": 32, "n_classes": 10, "steps": 5, "threads": os.cpu_count(),
            "interop_threads": 1, "channels_last": 0, "ema": 1}


def _placeholder(module: str, attr: str):
    if attr.startswith("_"):
        raise AttributeError(attr)
    return type(f"{module}.{attr}", (), {})


def _channels_last_input(module, args):
    """Each convolution's input in NHWC, so oneDNN runs the convolution and its output in that
    layout. The weights stay NCHW: the peer's spectral norm reshapes them with ``view``, which
    a channels_last weight cannot take (``model.to(memory_format=...)`` fails there)."""
    import torch

    return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])


def _allow_missing_torchvision() -> bool:
    """The peer's utils.py and datasets.py import torchvision for data loading and image saving,
    which the timed iteration never calls. Where torchvision cannot load (a CPU-only torch
    without a matching torchvision build), they get placeholder modules; returns whether so."""
    try:
        import torchvision  # noqa: F401

        return False
    except Exception:  # ImportError, or RuntimeError from a mismatched build
        pass
    import types

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    for name in ("torchvision", "torchvision.datasets", "torchvision.datasets.utils",
                 "torchvision.transforms", "torchvision.utils"):
        module = types.ModuleType(name)
        module.__getattr__ = lambda attr, name=name: _placeholder(name, attr)
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
    return True


# The peer's modules the timed iteration imports.
PEER_MODULES = ("BigGAN.py", "train_fns.py", "utils.py", "layers.py")


def environment(peer: str) -> dict:
    """What this Python and the peer checkout hold, found without importing torch."""
    import importlib.util
    import platform

    return {"python": sys.executable, "python_version": platform.python_version(),
            "torch_importable": importlib.util.find_spec("torch") is not None,
            "peer": peer, "peer_missing": [m for m in PEER_MODULES
                                           if not os.path.isfile(os.path.join(peer, m))]}


def forward_flops(module, *inputs) -> float:
    """2 x the multiply-adds of every Conv2d and Linear in ``module(*inputs)``, per input row."""
    import torch

    total = [0.0]

    def hook(layer, args, out):
        if isinstance(layer, torch.nn.Conv2d):
            k = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
            total[0] += 2.0 * out.numel() * k
        else:
            total[0] += 2.0 * out.numel() * layer.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return total[0] / inputs[0].shape[0]


def main(argv):
    # --dry_run: the settings and the environment, no torch (tests, and a check before a run).
    dry_run, count_only = "--dry_run" in argv, "--count" in argv
    argv = [a for a in argv if a not in ("--dry_run", "--count")]
    if len(argv) < 2:
        sys.exit(__doc__)
    peer, overrides = argv[1], argv[2:]
    s = dict(SETTINGS)
    for item in overrides:
        key, value = item.split("=", 1)
        if key not in SETTINGS:
            sys.exit(f"unknown setting {key!r}; settings: {', '.join(SETTINGS)}")
        s[key] = type(SETTINGS[key])(value)
    if dry_run:
        print(json.dumps({"who": "BigGAN-PyTorch", "dry_run": True, **s, **environment(peer)}))
        return
    sys.path.insert(0, peer)
    import torch

    torch.set_num_threads(s["threads"])
    torch.set_num_interop_threads(s["interop_threads"])  # before any parallel work
    torch.manual_seed(0)
    placeholder = _allow_missing_torchvision()
    import BigGAN
    import train_fns
    import utils

    common = dict(resolution=s["resolution"], n_classes=s["n_classes"], skip_init=True)
    G = BigGAN.Generator(G_ch=s["G_ch"], dim_z=s["dim_z"], G_attn="0", G_shared=False,
                         hier=False, shared_dim=0, G_lr=2e-4, G_B1=0.0, G_B2=0.999,
                         adam_eps=1e-8, BN_eps=1e-5, SN_eps=1e-8, **common)
    D = BigGAN.Discriminator(D_ch=s["D_ch"], D_attn="0", D_lr=2e-4, D_B1=0.0, D_B2=0.999,
                             adam_eps=1e-8, SN_eps=1e-8, **common)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    if count_only:
        G.eval()
        D.eval()
        z = torch.randn(2, G.dim_z)
        y = torch.randint(0, s["n_classes"], (2,))
        x = torch.randn(2, 3, s["resolution"], s["resolution"])
        print(json.dumps({"who": "BigGAN-PyTorch", "torch": torch.__version__,
                          "G_params": count(G), "D_params": count(D),
                          "G_flops": forward_flops(G, z, y), "D_flops": forward_flops(D, x, y)}))
        return
    if s["channels_last"]:  # NHWC convolutions, as XLA's on CPU
        for module in (*G.modules(), *D.modules()):
            if isinstance(module, torch.nn.Conv2d):
                module.register_forward_pre_hook(_channels_last_input)
    GD = BigGAN.G_D(G, D)
    ema = None
    if s["ema"]:
        G_ema = BigGAN.Generator(G_ch=s["G_ch"], dim_z=s["dim_z"], G_attn="0", G_shared=False,
                                 hier=False, shared_dim=0, no_optim=True, BN_eps=1e-5,
                                 SN_eps=1e-8, **common)
        ema = utils.ema(G, G_ema, 0.9999, 0)
    z_, y_ = utils.prepare_z_y(s["batch"], s["dim_z"], s["n_classes"], device="cpu")
    config = {"batch_size": s["batch"], "num_D_steps": s["num_D_steps"],
              "num_D_accumulations": 1, "num_G_accumulations": 1, "toggle_grads": True,
              "split_D": False, "D_ortho": 0.0, "G_ortho": 0.0, "ema": bool(s["ema"])}
    state_dict = {"itr": 0}
    train = train_fns.GAN_training_function(G, D, GD, z_, y_, ema, state_dict, config)
    n_real = s["batch"] * s["num_D_steps"]
    x = torch.randn(n_real, 3, s["resolution"], s["resolution"])
    if s["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, s["n_classes"], (n_real,))
    G.train()
    D.train()
    train(x, y)  # warm-up
    times = []
    for _ in range(s["steps"]):
        state_dict["itr"] += 1
        start = time.perf_counter()
        train(x, y)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(json.dumps({"who": "BigGAN-PyTorch", "torch": torch.__version__,
                      "threads": s["threads"], "interop_threads": s["interop_threads"],
                      "channels_last": s["channels_last"],
                      "torchvision_placeholder": placeholder,
                      **{k: s[k] for k in ("batch", "num_D_steps")},
                      "G_params": count(G), "D_params": count(D),
                      "median_s": median, "min_s": min(times), "max_s": max(times),
                      "images_per_s": s["batch"] / median}))


if __name__ == "__main__":
    main(sys.argv)
