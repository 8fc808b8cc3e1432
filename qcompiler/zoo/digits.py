"""``digits_cnn``: a small CNN trained here on scikit-learn's 8x8 digits, in a few seconds.

Data: ``sklearn.datasets.load_digits`` (1797 images, 10 classes), pixels scaled to [0, 1] (/16).
Split: a permutation with ``numpy.random.default_rng(0)``; the first 360 images are the held-out test
set, the other 1437 train the network and supply calibration data.

Network: three Conv(3x3, no bias)+BatchNorm+ReLU blocks, two MaxPools, Flatten, Linear(256 -> 10);
exported with its BatchNormalization nodes kept, so the quantizer has BN folding, Conv and Gemm work.
Training is deterministic (``torch.manual_seed(0)``, one thread, fixed batch order): Adam, 30 epochs.

Evaluation: accuracy on the test set.
"""

from __future__ import annotations

import time
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

NAME = "digits_cnn"
VERSION = "1"  # bump when the network, training or data changes: it renames the cache folder
DISTS = ("torch", "onnx", "onnxscript", "scikit-learn")
N_TEST = 360
EPOCHS = 30
BATCH = 64
SEED = 0

# Measured with ONNX Runtime on the exported model: 357 of 360 (the trained weights depend on the
# CPU's float rounding only through torch's kernels; tests/zoo/test_digits.py bounds what may differ).
REFERENCE_METRICS = {"accuracy": 0.9917}


def _network() -> Any:
    import torch
    from torch import nn

    class DigitsCNN(nn.Module):
        """Conv-BN-ReLU x3 with two 2x2 max pools: [N,1,8,8] -> [N,10] logits."""

        def __init__(self) -> None:
            super().__init__()

            def block(cin: int, cout: int) -> list[nn.Module]:
                return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

            self.features = nn.Sequential(
                *block(1, 16), *block(16, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2),
            )
            self.classifier = nn.Linear(64 * 2 * 2, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(torch.flatten(self.features(x), 1))

    return DigitsCNN()


def _dataset() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # [N,1,8,8] in [0,1]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(y))
    test, train = order[:N_TEST], order[N_TEST:]
    return x[train], y[train], x[test], y[test]


def _train(x: np.ndarray, y: np.ndarray) -> Any:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a fixed reduction order: the same weights on every run of this torch build
    try:
        torch.manual_seed(SEED)
        model = _network()
        opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        rng = np.random.default_rng(SEED)
        start = time.perf_counter()
        for epoch in range(EPOCHS):
            model.train()
            total = 0.0
            for idx in np.array_split(rng.permutation(len(y)), -(-len(y) // BATCH)):
                i = torch.from_numpy(idx)
                loss = torch.nn.functional.cross_entropy(model(xt[i]), yt[i])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            sched.step()
            if epoch % 10 == 9 or epoch == EPOCHS - 1:
                logger.info("zoo: digits_cnn epoch %d/%d loss %.4f (%.1f s)", epoch + 1, EPOCHS,
                            total / len(y), time.perf_counter() - start)
        return model.eval()
    finally:
        torch.set_num_threads(threads)


def build(folder: Path) -> None:
    """Train, save the state dict (``torch.save``), export ``model.onnx`` and the data split."""
    import torch

    from qcompiler.frontends.torch_export import export_module

    x_train, y_train, x_test, y_test = _dataset()
    model = _train(x_train, y_train)
    torch.save(model.state_dict(), folder / "digits_cnn.pt")
    with torch.no_grad():
        torch_acc = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    export_module(model, (torch.from_numpy(x_train[:2]),), input_names=["input"], output_names=["logits"],
                  dynamic_axes={"input": {0: "batch"}}, keep_batchnorm=True, path=folder / "model.onnx")
    np.savez(folder / "data.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    write_meta(folder, {"name": NAME, "version": VERSION, "torch_test_accuracy": torch_acc})
    logger.info("zoo: digits_cnn torch test accuracy %.4f", torch_acc)


def load(folder: Path) -> ZooModel:
    meta = read_meta(folder)

    def data() -> dict[str, np.ndarray]:
        return read_data(folder)

    def calibration(n: int, batch_size: int) -> list[Feed]:
        x = data()["x_train"]
        if n > len(x):
            raise ValueError(f"{NAME}: calibration_data has {len(x)} samples, asked for {n}")
        order = np.random.default_rng(SEED + 1).permutation(len(x))[:n]
        return [{"input": x[order[s]]} for s in batches(n, batch_size)]

    def evaluate(run: Runner, limit: int | None, progress: bool) -> dict[str, float]:
        d = data()
        x, y = d["x_test"][:limit], d["y_test"][:limit]
        correct = 0
        bar = progress_bar(len(y), NAME, progress)
        for s in batches(len(y), 128):
            logits = single_output(run({"input": x[s]}), "logits", NAME)
            correct += int((logits.argmax(axis=1) == y[s]).sum())
            bar.update(s.stop - s.start)
        bar.close()
        return {"accuracy": correct / len(y)}

    def torch_module() -> Any:
        import torch

        model = _network()
        model.load_state_dict(torch.load(folder / "digits_cnn.pt", weights_only=True))
        return model.eval()

    return ZooModel(
        name=NAME,
        description=f"CNN (Conv+BN+ReLU x3, Linear) on sklearn digits 8x8, trained here; "
                    f"torch test accuracy {meta['torch_test_accuracy']:.4f}",
        onnx_path=folder / "model.onnx",
        inputs=(InputSpec("input", ("batch", 1, 8, 8), "float32"),),
        outputs=("logits",),
        metric="accuracy",
        higher_is_better=True,
        reference_metrics=REFERENCE_METRICS,
        _calibration=calibration,
        _evaluate=evaluate,
        _torch_module=torch_module,
    )
