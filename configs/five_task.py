"""The official 5D run: derain + dehaze + lowlight + denoise σ25 + deblur (57 epochs, step 31).

    baryir-train --config=configs/five_task.py --workdir=runs/5d --config.data.data_dir=DATA

``get_config('ddp')`` gives the official multi-GPU variant: γ = 0.02, one summed potential step, 61 epochs,
step 35.
"""

from baryir_jax.config import TASKS_5D, base_config


def get_config(arg=None):
    c = base_config()
    c.data.tasks = TASKS_5D
    c.train.num_epochs = 57
    c.optim.decay_every_epochs = 31
    if arg == "ddp":
        c.loss.gamma = 0.02
        c.loss.potential_update = "summed"
        c.train.num_epochs = 61
        c.optim.decay_every_epochs = 35
    elif arg:
        raise ValueError(f"five_task.py: unknown variant {arg!r}; known: 'ddp'")
    c.eval.tasks = ("derain", "dehaze", "lowlight", "denoise_25", "deblur")
    c.eval.max_images = 20
    return c
