"""`make demo` / `qcompiler demo`: the product's main job on a real model that ships with the install.

MobileNetV2 (ImageNet weights from an installed package) is compiled for `cpu-int8` with calibration images
from the zoo; the artifact, its recipe and its report land in `demo-out/`, and the quantized model's top-1
agreement with the float model is measured on held-out natural images.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def run_demo(model_name: str = "mobilenet_v2", out_dir: str = "demo-out", *, calib_samples: int = 64,
             eval_limit: int = 200) -> int:
    from . import zoo
    from .compiler import CompileOptions, compile

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"[1/3] loading {model_name} from the zoo (first run exports it; later runs use the cache)")
    zm = zoo.get(model_name)
    target = "cpu-int8"
    print(f"[2/3] compiling for {target} with {calib_samples} calibration samples")
    art = compile(
        zm.onnx_path, target=target, calib=zm.calibration_data(calib_samples),
        output=out / f"{model_name}.{target}.onnx",
        options=CompileOptions(log=lambda m: print(f"      {m}")),
    )
    print(f"[3/3] evaluating float and quantized on {eval_limit} held-out inputs ({zm.metric})")
    before = zm.evaluate(zoo.ort_runner(zm.onnx_path), limit=eval_limit)
    after = zm.evaluate(art.run, limit=eval_limit)
    if art.report is not None:
        art.report.accuracy = {zm.metric: (before.get(zm.metric), after.get(zm.metric))}
        art.save(art.path)  # rewrite the report with the accuracy figures
        print()
        print(art.report.summary_table(color=sys.stdout.isatty()))
    print()
    print(f"{zm.metric}: float {before[zm.metric]:.4f}, quantized {after[zm.metric]:.4f}")
    print("wrote:")
    for f in art.files:
        print(f"  {f}")
    print(f"done in {time.perf_counter() - t0:.0f} s; open the .report.html file in a browser for the per-layer view")
    return 0
