"""fercli: facial expression recognition with the OBSR-Net bilinear ResNet34.

    import fercli
    rec = fercli.Recognizer()
    faces = rec.predict("photo.jpg")

The house has floors, lowest first. A package imports only from floors below it, or from
itself; tests/test_layers.py reads every import (inside functions too) and holds the order.

    base         errors, files, provenance, device, paper, plots: no fercli imports but these
    vision       images (the one decoder) and faces (detect, crop)
    data         fer prepare's readers, the dataset registry, prepared and device-resident data
    model        the networks (eqs. 1-7), checkpoints, the resolver, the forward pass with TTA, temperature
    export       the .npz and ONNX formats; running an ONNX graph (onnx_runtime: no torch)
    infer        the one inference path: classifier backends, Recognizer, predict
    evaluation   fer evaluate and fer calibrate: metrics, calibration
    train        fer train: config, GC optimizers, the engine, runs, jobs
    ablation     fer ablate: the paper's Table 5 ladder, runs of train measured by evaluation
    api          fercli.Recognizer, Face, plot_emotions: the stable Python surface
    serve        fer serve: the HTTP service over the api
    bench        fer bench: the training engine against a usual pipeline
    cli          the Typer commands, the only place that imports typer and rich

Predicting with the bundled model needs no torch (its int8 graph ships in fercli/assets):
`pip install fercli` is the inference core, `pip install 'fercli[train]'` adds torch.
"""


from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["Face", "FerError", "Recognizer", "plot_emotions", "__version__"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        # deferred: the API loads onnxruntime and opencv; `fer --help` and `import fercli` stay fast
        from fercli import api

        return getattr(api, name)
    raise AttributeError(f"module 'fercli' has no attribute {name!r}")
