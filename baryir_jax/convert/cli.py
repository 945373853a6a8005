"""``baryir-convert --checkpoint FILE --output DIR``: an official BaryIR checkpoint → a model checkpoint."""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="baryir-convert",
        description="Convert an official BaryIR PyTorch checkpoint (a whole pickled model as saved by the official "
        "trainer, or a state dict) into a baryir_jax model checkpoint directory. The file is read "
        "without PyTorch, and without running any code it contains.",
    )
    p.add_argument("--checkpoint", required=True, help="the .pth/.pt file")
    p.add_argument("--output", required=True, help="a new (or empty) directory for the converted checkpoint")
    p.add_argument(
        "--patch-size",
        type=int,
        default=None,
        help="training patch size of the potentials (default: read off their shapes; 128 or 144)",
    )
    p.add_argument("--no-potentials", action="store_true", help="convert the restorer only")
    args = p.parse_args(argv)

    from baryir_jax.convert.official import ConversionError, torch_to_flax
    from baryir_jax.convert.torch_pickle import UnsafeCheckpointError
    from baryir_jax.models.io import save_model_checkpoint

    if not os.path.isfile(args.checkpoint):
        print(f"baryir-convert: no such file: {args.checkpoint}", file=sys.stderr)
        return 2
    if os.path.isdir(args.output) and os.listdir(args.output):
        print(f"baryir-convert: {args.output} is not empty; choose a new directory", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        out = torch_to_flax(args.checkpoint, patch_size=args.patch_size)
    except (ConversionError, UnsafeCheckpointError) as e:
        print(f"baryir-convert: {args.checkpoint}: {e}", file=sys.stderr)
        return 1
    t_read = time.perf_counter() - t0
    pots = None if args.no_potentials else out["potentials"]
    save_model_checkpoint(
        args.output,
        out["barynet"],
        out["barynet_config"],
        pots,
        out["potentials_config"] if pots is not None else None,
        extra={"converted_from": os.path.basename(args.checkpoint)},
    )
    total = time.perf_counter() - t0
    import jax

    n = sum(x.size for x in jax.tree.leaves(out["barynet"]))
    msg = f"BaryNet {n:,} parameters"
    if pots is not None:
        pc = out["potentials_config"]
        msg += f"; {pc['num_potentials']} potentials (patch {pc['patch_size']})"
    print(f"{msg}; read+map {t_read:.1f}s, total {total:.1f}s -> {os.path.abspath(args.output)}")
    return 0


def run():  # console-script entry point
    sys.exit(main())


if __name__ == "__main__":
    run()
