"""A stand-in for a model a suspect serves: read a PNG, restore it with a model, write a PNG.

Usage: python query_model.py MODEL IN.png OUT.png. Tests use it as the
--query-command of query-only verification; MODEL is a file or zoo:NAME.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from PIL import Image

from critprint.models import load_model


def main() -> None:
    model, source, target = sys.argv[1:4]
    handle = load_model(model)
    with Image.open(source) as picture:
        array = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0
    image = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)
    with torch.no_grad():
        output = handle(image)[0].clamp(0.0, 1.0)
    pixels = output.mul(255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(target, format="PNG")


if __name__ == "__main__":
    main()
