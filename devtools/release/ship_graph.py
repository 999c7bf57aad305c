"""Ship the bundled model's int8 ONNX graph: fercli/assets/default_model.int8.onnx as ≤ 15 MiB
parts beside a sha256-checked index, built from the shipped weights exactly as `fer predict`
builds it (fercli.infer.torch_backend.bundled_graph_bytes). With it, predicting with the
bundled model on a CPU needs onnxruntime only, not torch.

    python3 devtools/release/ship_graph.py

Run it after devtools/release/ship_model.py or make_calibration_faces.py changes an input of the
graph, then tests/test_onnx.py (it checks the shipped graph against a fresh build).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fercli.export.onnx_runtime import ONNX_FORMAT  # noqa: E402
from fercli.files import atomic_write_many, shard_files  # noqa: E402
from fercli.infer.torch_backend import bundled_graph_bytes  # noqa: E402
from fercli.model.locate import DEFAULT_GRAPH  # noqa: E402

PART_BYTES = 15 * 1024 * 1024  # as the .npz's parts


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    data = bundled_graph_bytes()
    for old in DEFAULT_GRAPH.parent.glob(f"{DEFAULT_GRAPH.name}.part*"):
        old.unlink()
    files = shard_files(DEFAULT_GRAPH, data, PART_BYTES, ONNX_FORMAT + "-shards")
    atomic_write_many(files)
    print(f"{DEFAULT_GRAPH}: {len(data)} bytes in {len(files) - 1} parts")


if __name__ == "__main__":
    main()
