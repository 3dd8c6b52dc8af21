"""The GPU run in one command: a 32x32 conv UNet, its ground truth, BNS at NFE 4 / 8 / 16.

    python -m experiments.device_check            # on an accelerator, at most about 4 minutes
    python -m experiments.device_check --smoke    # seconds on CPU: every stage at toy size

Offline, from the source tree (JAX, Flax, optax, diffrax, scikit-image). Trains a small
class-conditional eps-prediction UNet (residual conv blocks, GroupNorm, self-attention at the
lowest resolution, time and class embeddings, a null class) on ``bj.ddpm("linear")`` for about a
minute on 32x32 patches of six of scikit-image's bundled colour photographs (one class each,
data in [-1, 1]), wraps it with ``bj.wrap_diffusion`` at guidance 2, solves ground truth for 520
training and 128 validation noises, trains BNS at NFE 4, 8 and 16, and measures sampling
throughput (images per second) of BNS and Euler and the peak accelerator memory. Each result is
written to ``OUT/results.json`` as soon as it is known (a run cut short keeps what it measured);
``OUT/gpu_section.md`` is the BENCHMARKS.md section made from them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import bespoke_jax as bj
from bespoke_jax.io.files import atomic_write
from bespoke_jax.models.networks import time_embedding

PHOTOS = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "rocket")
GUIDANCE = 2.0


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes of one run; ``SMOKE`` shrinks every stage to seconds on a CPU."""

    patch: int = 32
    channels: int = 64
    groups: int = 8
    train_seconds: float = 60.0
    train_batch: int = 128
    patches_per_photo: int = 512
    num_train: int = 520
    num_val: int = 128
    nfes: tuple[int, ...] = (4, 8, 16)
    bns_steps: int = 400
    bns_batch: int = 40
    throughput_batch: int = 512
    repeats: int = 3
    chunk: int = 50
    budget_seconds: float = 240.0
    rtol: float = 1e-5


SMOKE = Config(
    patch=8,
    channels=8,
    groups=2,
    train_seconds=0.0,
    train_batch=8,
    patches_per_photo=4,
    num_train=6,
    num_val=4,
    nfes=(2,),
    bns_steps=2,
    bns_batch=4,
    throughput_batch=4,
    repeats=1,
    chunk=1,
    budget_seconds=600.0,
    rtol=1e-2,
)


def photo_patches(size: int, per_photo: int, key) -> tuple[np.ndarray, np.ndarray]:
    """``per_photo`` random ``size x size`` RGB patches of each photo in [-1, 1], and labels."""
    import skimage.data

    patches, labels = [], []
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
    for label, name in enumerate(PHOTOS):
        image = getattr(skimage.data, name)()[..., :3].astype(np.float32) / 127.5 - 1.0
        rows = rng.integers(0, image.shape[0] - size, per_photo)
        cols = rng.integers(0, image.shape[1] - size, per_photo)
        patches += [image[r : r + size, c : c + size] for r, c in zip(rows, cols, strict=True)]
        labels += [label] * per_photo
    return np.stack(patches), np.asarray(labels, np.int32)


class ResBlock(nnx.Module):
    """GroupNorm, SiLU, conv; the embedding added; GroupNorm, SiLU, conv; a residual."""

    def __init__(self, cin: int, cout: int, emb: int, groups: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.GroupNorm(cin, num_groups=groups, rngs=rngs)
        self.conv1 = nnx.Conv(cin, cout, (3, 3), rngs=rngs)
        self.emb = nnx.Linear(emb, cout, rngs=rngs)
        self.norm2 = nnx.GroupNorm(cout, num_groups=groups, rngs=rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), rngs=rngs)
        self.skip = nnx.Conv(cin, cout, (1, 1), rngs=rngs) if cin != cout else None

    def __call__(self, h, e):
        out = self.conv1(nnx.silu(self.norm1(h))) + self.emb(e)[:, None, None, :]
        out = self.conv2(nnx.silu(self.norm2(out)))
        return out + (h if self.skip is None else self.skip(h))


def pool(h):
    """2x2 mean pooling of ``(B, H, W, C)``."""
    b, height, width, c = h.shape
    return h.reshape(b, height // 2, 2, width // 2, 2, c).mean(axis=(2, 4))


class UNet(nnx.Module):
    """A class-conditional eps-prediction UNet on ``(B, P, P, 3)``, three resolutions."""

    def __init__(self, channels: int, groups: int, num_classes: int, *, rngs: nnx.Rngs):
        c, emb = channels, 4 * channels
        self.time1 = nnx.Linear(c, emb, rngs=rngs)
        self.time2 = nnx.Linear(emb, emb, rngs=rngs)
        self.label = nnx.Embed(num_classes + 1, emb, rngs=rngs)
        self.conv_in = nnx.Conv(3, c, (3, 3), rngs=rngs)
        self.down1 = ResBlock(c, c, emb, groups, rngs=rngs)
        self.down2 = ResBlock(c, 2 * c, emb, groups, rngs=rngs)
        self.mid1 = ResBlock(2 * c, 2 * c, emb, groups, rngs=rngs)
        self.attn_norm = nnx.GroupNorm(2 * c, num_groups=groups, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(4, 2 * c, decode=False, rngs=rngs)
        self.mid2 = ResBlock(2 * c, 2 * c, emb, groups, rngs=rngs)
        self.up2 = ResBlock(4 * c, c, emb, groups, rngs=rngs)
        self.up1 = ResBlock(2 * c, c, emb, groups, rngs=rngs)
        self.out_norm = nnx.GroupNorm(c, num_groups=groups, rngs=rngs)
        self.conv_out = nnx.Conv(c, 3, (3, 3), rngs=rngs)
        self.channels = c

    def __call__(self, x, timestep, labels):
        e = time_embedding(timestep / 1000.0, self.channels, max_frequency=1000.0)
        e = self.time2(nnx.silu(self.time1(e))) + self.label(labels)
        e = nnx.silu(e)
        h1 = self.down1(self.conv_in(x), e)  # P
        h2 = self.down2(pool(h1), e)  # P / 2
        h = self.mid1(pool(h2), e)  # P / 4
        b, s, _, ch = h.shape
        tokens = self.attn_norm(h).reshape(b, s * s, ch)
        h = h + self.attn(tokens).reshape(h.shape)
        h = self.mid2(h, e)
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
        h = self.up2(jnp.concatenate([h, h2], axis=-1), e)
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
        h = self.up1(jnp.concatenate([h, h1], axis=-1), e)
        return self.conv_out(nnx.silu(self.out_norm(h)))


class Recorder:
    """``results.json`` in ``out``, rewritten atomically after every result."""

    def __init__(self, out: Path, config: Config, smoke: bool):
        self.path = out / "results.json"
        device = jax.devices()[0]
        self.results = {
            "config": dataclasses.asdict(config),
            "smoke": smoke,
            "device": f"{device.platform} {device.device_kind}",
            "jax": jax.__version__,
            "host": platform.machine(),
        }
        self.write()

    def __call__(self, name: str, value) -> None:
        self.results[name] = value
        self.write()

    def write(self) -> None:
        atomic_write(self.path, json.dumps(self.results, indent=2) + "\n")


def peak_memory_bytes() -> int | None:
    """The accelerator's peak bytes in use, where the backend reports it."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def train_unet(config: Config, key, deadline: float):
    """Fit the UNet (eps-prediction, label dropout 0.1) until ``train_seconds`` have passed."""
    ddpm = bj.ddpm("linear")
    abar = jnp.asarray(ddpm.alphas_cumprod(), jnp.float32)
    k_data, k_init, key = jax.random.split(key, 3)
    images, labels = photo_patches(config.patch, config.patches_per_photo, k_data)
    images, labels = jnp.asarray(images), jnp.asarray(labels)
    model = UNet(config.channels, config.groups, len(PHOTOS), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    optimizer = optax.adam(2e-4)
    null = len(PHOTOS)

    def loss_fn(params, key):
        k_i, k_t, k_e, k_d = jax.random.split(key, 4)
        idx = jax.random.randint(k_i, (config.train_batch,), 0, images.shape[0])
        x1, y = images[idx], labels[idx]
        k = jax.random.randint(k_t, (config.train_batch,), 0, abar.shape[0])
        eps = jax.random.normal(k_e, x1.shape)
        a = abar[k][:, None, None, None]
        x_k = jnp.sqrt(a) * x1 + jnp.sqrt(1.0 - a) * eps
        y = jnp.where(jax.random.bernoulli(k_d, 0.1, y.shape), null, y)
        pred = nnx.merge(graphdef, params)(x_k, k.astype(jnp.float32), y)
        return jnp.mean(jnp.square(pred - eps))

    @jax.jit
    def steps(params, opt_state, key):
        def step(carry, key):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, key)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(
            step, (params, opt_state), jax.random.split(key, config.chunk)
        )
        return params, opt_state, losses

    opt_state = optimizer.init(params)
    start, done, losses = time.perf_counter(), 0, [float("nan")]
    while True:
        key, sub = jax.random.split(key)
        params, opt_state, chunk = steps(params, opt_state, sub)
        losses = np.asarray(chunk)
        done += config.chunk
        now = time.perf_counter()
        if now - start >= config.train_seconds or now >= deadline:
            break
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    info = {
        "steps": done,
        "seconds": round(time.perf_counter() - start, 2),
        "final_loss": float(np.mean(losses)),
        "num_params": num_params,
    }
    return nnx.merge(graphdef, params), ddpm, info


def guided_field(model, ddpm):
    """``u(t, x, (labels,))`` of the UNet at guidance ``GUIDANCE`` (one doubled-batch pass)."""
    graphdef, state = nnx.split(model)
    null = len(PHOTOS)

    def net(x, timestep, labels):
        both = nnx.merge(graphdef, state)(
            jnp.concatenate([x, x]),
            jnp.concatenate([timestep, timestep]),
            jnp.concatenate([labels, jnp.full_like(labels, null)]),
        )
        cond, uncond = jnp.split(both, 2)
        return (1.0 + GUIDANCE) * cond - GUIDANCE * uncond

    return bj.wrap_diffusion(net, ddpm, "eps")


def throughput(run, x0, args, repeats: int) -> float:
    """Images per second of a jitted ``run(x0, args)``, after one compiling call."""
    jax.block_until_ready(run(x0, args))
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(run(x0, args))
    return repeats * x0.shape[0] / (time.perf_counter() - start)


def run(config: Config, out: Path, smoke: bool) -> dict:
    """Every stage in order, each result recorded as soon as it is known."""
    start = time.perf_counter()
    deadline = start + config.budget_seconds
    record = Recorder(out, config, smoke)
    model, ddpm, info = train_unet(config, jax.random.key(0), deadline)
    record("unet", info)
    u = guided_field(model, ddpm)
    n_train, n_val = config.num_train, config.num_val
    x0 = jax.random.normal(jax.random.key(1), (n_train + n_val, config.patch, config.patch, 3))
    labels = jnp.arange(n_train + n_val) % len(PHOTOS)
    t0 = time.perf_counter()
    gt = bj.ground_truth(u, x0, args=(labels,), rtol=config.rtol, atol=config.rtol)
    record(
        "ground_truth",
        {"samples": n_train + n_val, "seconds": round(time.perf_counter() - t0, 2), "nfe": gt.nfe},
    )
    train_data = bj.TrainingData(x0[:n_train], gt.x1[:n_train], nfe=gt.nfe)
    val_data = bj.TrainingData(x0[n_train:], gt.x1[n_train:], nfe=gt.nfe)
    train_args, val_args = (labels[:n_train],), (labels[n_train:],)
    x0_test = jax.random.normal(jax.random.key(2), (config.throughput_batch, *x0.shape[1:]))
    test_args = (jnp.arange(config.throughput_batch) % len(PHOTOS),)
    for nfe in config.nfes:
        if time.perf_counter() >= deadline:
            break
        family = bj.bns(nfe, init="euler")
        t0 = time.perf_counter()
        result = bj.train(
            family, u, x0[:n_train], x0[n_train:], args=train_args, val_args=val_args,
            train_data=train_data, val_data=val_data,
            steps=config.bns_steps, batch_size=config.bns_batch,
            eval_every=max(1, config.bns_steps // 4), progress=False,
        )  # fmt: skip
        train_seconds = time.perf_counter() - t0
        bns = jax.jit(lambda x, a, f=family, p=result.params: f.sample(p, u, x, a))
        euler = jax.jit(lambda x, a, n=nfe: bj.solvers.euler(u, x, nfe=n, args=a))
        record(
            f"bns_nfe{nfe}",
            {
                "train_seconds": round(train_seconds, 2),
                "val_psnr": round(result.best_val_psnr, 2),
                "euler_val_psnr": round(
                    float(bj.psnr(euler(val_data.x0, val_args), val_data.x1)), 2
                ),
                "bns_images_per_s": round(throughput(bns, x0_test, test_args, config.repeats), 1),
                "euler_images_per_s": round(
                    throughput(euler, x0_test, test_args, config.repeats), 1
                ),
            },
        )
    record("peak_memory_bytes", peak_memory_bytes())
    record("wall_seconds", round(time.perf_counter() - start, 1))
    atomic_write(out / "gpu_section.md", section(record.results))
    return record.results


def section(results: dict) -> str:
    """The BENCHMARKS.md GPU section from a results dict (what a cut-short run measured)."""
    lines = [
        "## GPU run (experiments/device_check.py)",
        "",
        f"Device: {results['device']}, jax {results['jax']}; "
        f"wall {results.get('wall_seconds', '?')} s.",
    ]
    if "unet" in results:
        unet, size = results["unet"], results["config"]["patch"]
        lines.append(
            f"UNet ({unet['num_params']:,} parameters, {size}x{size} patches of six photographs, "
            f"eps-prediction on "
            f"bj.ddpm('linear')): {unet['steps']} steps in {unet['seconds']} s, final loss "
            f"{unet['final_loss']:.4f}."
        )
    if "ground_truth" in results:
        gt = results["ground_truth"]
        lines.append(
            f"Ground truth (guidance {GUIDANCE}): {gt['samples']} samples in {gt['seconds']} s, "
            f"{gt['nfe']} model calls."
        )
    lines += ["", "| NFE | BNS val PSNR | Euler val PSNR | BNS img/s | Euler img/s | BNS train s |"]
    lines.append("|---|---|---|---|---|---|")
    for key, row in results.items():
        if key.startswith("bns_nfe"):
            lines.append(
                f"| {key[7:]} | {row['val_psnr']} | {row['euler_val_psnr']} | "
                f"{row['bns_images_per_s']} | {row['euler_images_per_s']} | "
                f"{row['train_seconds']} |"
            )
    peak = results.get("peak_memory_bytes")
    if peak is not None:
        lines += ["", f"Peak accelerator memory: {peak / 2**30:.2f} GiB."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every stage at toy size (CPU)")
    parser.add_argument("--out", type=Path, default=Path("runs/device_check"))
    options = parser.parse_args(argv)
    with jax.numpy_dtype_promotion("standard"):  # Flax's pooling and norms promote inside
        results = run(SMOKE if options.smoke else Config(), options.out, options.smoke)
    print(json.dumps(results, indent=2))
    if not math.isfinite(results.get("wall_seconds", math.nan)):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
