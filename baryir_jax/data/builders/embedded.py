"""`embedded`: a small all-in-one data set built offline from the photographs bundled with scikit-image.

Nothing is downloaded: the files are read from the installed `skimage/data/` folder directly (never through
`skimage.data`'s fetchers, which may download). Colour photographs only; each is resized so that its longer
side is 256 px (Lanczos).

* train (7 photos): astronaut, rocket, hubble_deep_field, immunohistochemistry (ihc), retina,
  motorcycle_left, motorcycle_right;
* test (2 photos, held out): chelsea, coffee.
* The grayscale photographs (camera, moon, coins, brick, grass, gravel) are skipped and counted.

Splits (all paired: `degraded`, `clean`):
* `train_clean`: the 7 clean train photos (degraded = clean; noise is added on the fly in training);
* `train_derain`, `train_dehaze`, `train_deblur`, `train_lowlight`: 2 variants per train photo (14 pairs),
  synthesised by `degradations` with seed `seed_for('embedded', photo, task, variant)`;
* `test_denoise_15`, `test_denoise_25`, `test_denoise_50`: frozen noise (`degradations.frozen_noisy`, key =
  photo name), like CBSD68;
* `test_derain`, `test_dehaze`, `test_deblur`, `test_lowlight`: one variant per test photo;
* `test_jpeg_q20`: JPEG at quality 20, an unseen degradation for the generalisation demo.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from PIL import Image

from baryir_jax.data import degradations
from baryir_jax.data.builders.base import RestorationBuilder
from baryir_jax.data.images import ImageProblem, encode_png, load_image_file

TRAIN_PHOTOS = {  # name -> file in skimage/data
    "astronaut": "astronaut.png",
    "rocket": "rocket.jpg",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "retina": "retina.jpg",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
}
TEST_PHOTOS = {"chelsea": "chelsea.png", "coffee": "coffee.png"}
GRAY_PHOTOS = {
    "camera": "camera.png",
    "moon": "moon.png",
    "coins": "coins.png",
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
}
MAX_SIDE = 256
TRAIN_VARIANTS = 2
JPEG_QUALITY = 20
SYNTH_TASKS = ("derain", "dehaze", "deblur", "lowlight")
NOISE_TASKS = tuple(degradations.NOISE_SIGMAS)  # denoise_15, denoise_25, denoise_50


def skimage_data_dir() -> str:
    import skimage  # the installed package; its data/ folder holds the bundled images

    return os.path.join(os.path.dirname(skimage.__file__), "data")


@dataclasses.dataclass(frozen=True)
class _Synth:
    key: str
    photo: str
    task: str  # 'clean', a SYNTH_TASKS or NOISE_TASKS entry, or 'jpeg'
    variant: int
    test: bool


def _resize(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    s = MAX_SIDE / max(h, w)
    if s >= 1:
        return img
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS))


class Embedded(RestorationBuilder):
    name = "embedded"
    NEEDS_MANUAL_DIR = False
    DESCRIPTION = __doc__

    def _scan(self, root, report):
        folder = skimage_data_dir()
        self._photos: dict[str, np.ndarray] = {}
        for photo, fn in {**TRAIN_PHOTOS, **TEST_PHOTOS, **GRAY_PHOTOS}.items():
            path = os.path.join(folder, fn)
            try:
                img = load_image_file(path)
            except ImageProblem as e:
                report.add(
                    e.kind, "all", f"skimage/data/{fn}", e.message + " (this scikit-image install lacks it; left out)"
                )
                continue
            if img.single_channel:
                report.add(
                    "skipped",
                    "all",
                    f"skimage/data/{fn}",
                    "grayscale photograph: the embedded set uses colour photographs only",
                )
                continue
            self._photos[photo] = _resize(img.decode())
        train = [p for p in TRAIN_PHOTOS if p in self._photos]
        test = [p for p in TEST_PHOTOS if p in self._photos]
        plan = {"train_clean": [_Synth(p, p, "clean", 0, False) for p in train]}
        for task in SYNTH_TASKS:
            plan[f"train_{task}"] = [
                _Synth(f"{p}_v{v}", p, task, v, False) for p in train for v in range(TRAIN_VARIANTS)
            ]
        for task in NOISE_TASKS + SYNTH_TASKS:
            plan[f"test_{task}"] = [_Synth(p, p, task, 0, True) for p in test]
        plan[f"test_jpeg_q{JPEG_QUALITY}"] = [_Synth(p, p, "jpeg", 0, True) for p in test]
        self.EXPECTED = {s: len(v) for s, v in plan.items()}
        report.note(
            f"{len(train)} train and {len(test)} test photographs from scikit-image, longer side "
            f"{MAX_SIDE} px; no network used"
        )
        return plan

    def _make_example(self, split, item: _Synth):
        clean = self._photos[item.photo]
        if item.task == "clean":
            degraded = clean
        elif item.task == "jpeg":
            degraded = degradations.jpeg(clean, JPEG_QUALITY)
        elif item.task in NOISE_TASKS:
            degraded = degradations.frozen_noisy(clean, item.photo, degradations.NOISE_SIGMAS[item.task])
        else:
            tag = "embedded-test" if item.test else "embedded"
            degraded = degradations.synthesize(
                item.task, clean, degradations.seed_for(tag, item.photo, item.task, item.variant)
            )
        clean_png = encode_png(clean)
        deg_png = clean_png if degraded is clean else encode_png(degraded)
        return {"degraded": deg_png, "clean": clean_png, "name": f"{item.key}.png", "clean_name": f"{item.photo}.png"}
