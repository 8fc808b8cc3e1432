"""A model over 2 GB (synthetic, made here) round-trips through external data in bounded memory."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ..memory import HWM

N_TENSORS = 3
ROWS, COLS = 12_000, 16_384  # 786 MB of float32 each, 2.36 GB in all
CHUNK_ROWS = 1_000


def _write_model(folder: Path) -> tuple[Path, int]:
    """Write the data file chunk by chunk (never the whole model in memory) and a model pointing at it."""
    data = folder / "big.bin"
    inits = []
    offset = 0
    with open(data, "wb") as f:
        for t in range(N_TENSORS):
            start = offset
            for r in range(0, ROWS, CHUNK_ROWS):
                rows = np.arange(r, r + CHUNK_ROWS, dtype=np.float32)[:, None]
                chunk = rows * np.float32(1e-3) + np.arange(COLS, dtype=np.float32)[None, :] * np.float32(t + 1)
                f.write(chunk.tobytes())
                offset += chunk.nbytes
            tp = TensorProto(name=f"w{t}", data_type=TensorProto.FLOAT, dims=[ROWS, COLS])
            tp.data_location = TensorProto.EXTERNAL
            for k, v in (("location", "big.bin"), ("offset", str(start)), ("length", str(offset - start))):
                tp.external_data.add(key=k, value=v)
            inits.append(tp)
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, [2])
    outs = [helper.make_tensor_value_info(f"y{t}", TensorProto.FLOAT, [2, COLS]) for t in range(N_TENSORS)]
    nodes = [helper.make_node("Gather", [f"w{t}", "idx"], [f"y{t}"]) for t in range(N_TENSORS)]
    g = helper.make_graph(nodes, "big", [idx], outs, inits)
    model = folder / "big.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), model)
    return model, offset


def _tensor_digests(model_path: Path) -> dict[str, str]:
    m = onnx.load(model_path, load_external_data=False)
    out = {}
    for t in m.graph.initializer:
        info = {e.key: e.value for e in t.external_data}
        h = hashlib.sha256()
        left = int(info["length"])
        with open(model_path.parent / info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            while left:
                b = f.read(min(64 << 20, left))
                h.update(b)
                left -= len(b)
        out[t.name] = h.hexdigest()
    return out


@pytest.mark.slow
def test_over_2gb_round_trip_in_bounded_memory(tmp_path: Path) -> None:
    src_dir, out_dir = tmp_path / "src", tmp_path / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    model, total = _write_model(src_dir)
    assert total > 2**31
    # Load and save in a fresh process so its peak RSS is the round trip's alone.
    script = HWM + (
        "import json, qcompiler\n"
        f"m = qcompiler.load({str(model)!r})\n"
        f"qcompiler.save(m, {str(out_dir / 'big.onnx')!r})\n"
        "print(json.dumps({'peak_rss_mb': _hwm()}))\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    peak_mb = json.loads(res.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    model_mb = total / 2**20
    print(f"\n>2GB round trip: model {model_mb:.0f} MB, peak RSS {peak_mb:.0f} MB")
    # Streaming: memory stays far below the model's size (not twice it, not once it).
    assert peak_mb < 0.25 * model_mb
    assert (out_dir / "big.onnx.data").stat().st_size >= total
    assert _tensor_digests(model) == _tensor_digests(out_dir / "big.onnx")
