"""The official 3D run: derain + dehaze + denoise σ15/25/50 (README of the official code: 56 epochs, step 50).

baryir-train --config=configs/three_task.py --workdir=runs/3d --config.data.data_dir=DATA
"""

from baryir_jax.config import TASKS_3D, base_config


def get_config(arg=None):
    c = base_config()
    c.data.tasks = TASKS_3D
    c.train.num_epochs = 56
    c.optim.decay_every_epochs = 50
    c.eval.tasks = ("derain", "dehaze", "denoise_15", "denoise_25", "denoise_50")
    c.eval.max_images = 20  # periodic validation on a subset; baryir-evaluate runs the whole benchmark
    return c
