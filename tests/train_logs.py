"""Reading what ``baryir-train`` logged (shared by the training tests)."""

import re


def step_scalars(stderr: str) -> dict[int, dict[str, float]]:
    """Per-step scalars from clu's logging writer (lines ``[STEP] train/NAME=VALUE, ...``): {step: {NAME: value}}."""
    out = {}
    for m in re.finditer(r"\[(\d+)\] (train/.*)", stderr):
        vals = dict(kv.split("=") for kv in m.group(2).split(", "))
        out[int(m.group(1))] = {k[6:]: float(v) for k, v in vals.items()}
    return out
