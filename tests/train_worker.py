"""A small training run, in this process or launched by the tests as a separate one.

``python train_worker.py SPEC_JSON`` runs ``bj.train`` on ``problem()`` with the keyword
arguments in the spec and saves the parameters to ``spec["out"]`` (``.npz``, process 0). Spec
keys: ``out``; ``train`` (keyword arguments of ``bj.train``); optional ``distributed``
(``{"port", "num_processes", "process_id"}``) and ``data`` (an ``.npz`` of precomputed ground
truth) and ``block_at`` (an evaluation step at which to print ``blocked`` and wait forever,
for a test to kill the process there) and ``odd_batch`` (first check that a batch size that
is not a multiple of the device count is refused).
"""

import json
import sys
import time

import jax
import numpy as np

DIM, NUM_TRAIN, NUM_VAL = 8, 32, 16


def problem():
    """``(u, x0_train, x0_val, args, val_args)``: a 4-component mixture in 8 dimensions with a
    per-sample scale and a shared shift in ``args``."""
    import bespoke_jax as bj

    mixture = bj.GaussianMixture.random(jax.random.key(1), 4, DIM, 0.2)
    base = mixture.velocity(bj.cond_ot())

    def u(t, x, args):
        return base(t, x, None) * args["scale"][:, None] + args["shift"]

    k_train, k_val, k_args = jax.random.split(jax.random.key(2), 3)
    x0_train = np.asarray(jax.random.normal(k_train, (NUM_TRAIN, DIM)))
    x0_val = np.asarray(jax.random.normal(k_val, (NUM_VAL, DIM)))
    scales = 1.0 + 0.1 * np.asarray(jax.random.uniform(k_args, (NUM_TRAIN + NUM_VAL,)))
    shift = np.float32(0.01)
    args = {"scale": scales[:NUM_TRAIN], "shift": shift}
    val_args = {"scale": scales[NUM_TRAIN:], "shift": shift}
    return u, x0_train, x0_val, args, val_args


def run(train_kwargs: dict, data=None, on_eval=None):
    """``bj.train`` of BNS at NFE 4 on ``problem()``."""
    import bespoke_jax as bj

    u, x0_train, x0_val, args, val_args = problem()
    kwargs = dict(train_kwargs)
    if data is not None:
        kwargs["train_data"], kwargs["val_data"] = data
    return bj.train(
        bj.bns(4),
        u,
        x0_train,
        x0_val,
        args=args,
        val_args=val_args,
        progress=False,
        on_eval=on_eval,
        **kwargs,
    )


def save_data(path, data) -> None:
    """The (train, val) ground truth of a result, as one ``.npz``."""
    train, val = data
    np.savez(path, train_x1=train.x1, val_x1=val.x1, train_nfe=train.nfe, val_nfe=val.nfe)


def load_data(path):
    """``save_data``'s pairs, as ``TrainingData`` for ``problem()``'s noise."""
    import bespoke_jax as bj

    _, x0_train, x0_val, _, _ = problem()
    with np.load(path) as f:
        train = bj.TrainingData(x0_train, f["train_x1"], nfe=int(f["train_nfe"]))
        val = bj.TrainingData(x0_val, f["val_x1"], nfe=int(f["val_nfe"]))
    return train, val


def main(spec: dict) -> None:
    distributed = spec.get("distributed")
    if distributed:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{distributed['port']}",
            num_processes=distributed["num_processes"],
            process_id=distributed["process_id"],
        )
    block_at = spec.get("block_at")

    def on_eval(step, metrics):
        print(f"eval {step} {metrics['val_psnr']:.4f}", flush=True)
        if step == block_at:
            print("blocked", flush=True)
            time.sleep(3600)

    data = load_data(spec["data"]) if spec.get("data") else None
    if spec.get("odd_batch"):
        try:
            run({**spec["train"], "batch_size": spec["odd_batch"]}, data)
        except ValueError as err:
            print(f"refused: {err}", flush=True)
        else:
            raise SystemExit(f"batch_size {spec['odd_batch']} was not refused")
    result = run(spec["train"], data, on_eval)
    if jax.process_index() == 0:
        leaves = {
            f"p{i}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(result.params))
        }
        np.savez(spec["out"], devices=jax.device_count(), **leaves)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
