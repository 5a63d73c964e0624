"""int8 image towers for CPU: exported to ONNX once, quantised with ONNX Runtime, kept in the cache folder.

Why ONNX Runtime (figures from ``bench/bench_int8.py`` on this 2-core CPU, random-init ViT-B/32): torch's
``quantize_dynamic`` reaches only the ``nn.Linear`` layers of the MLPs (``nn.MultiheadAttention`` keeps its
projections in fp32) and ran ~1.35x fp32; replacing the attention projections by plain ``nn.Linear`` so that
they quantise too gave ~1.6x; ONNX Runtime quantises every matmul of the exported graph and runs it with its own
fused kernels, the fastest of the three. Its artefact is a plain ``.onnx`` file (protobuf, never unpickled), which
is what the cache folder keeps.

Recipe (``RECIPE``): dynamic quantisation (no calibration set), int8 weights with one scale per output channel
(per-tensor scales lose the trained models' outlier channels), activations quantised per tensor at run time (so
a feature depends very slightly on the other images in its batch);
only MatMul/Gemm are quantised: convolutions (the patch embedding, ResNet towers) stay fp32, where ORT's integer
convolution is slow and hurts agreement most.

The file is named by a hash of the model's identity (model id, weights fingerprint, preprocessing) and the recipe,
so a re-run loads it instead of exporting and quantising again.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from .cache import cache_key
from .errors import MissingExtraError, ModelLoadError

__all__ = ["INSTALL_HINT", "RECIPE", "Int8ImageTower", "int8_image_tower"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'vlmcls[int8]'"

# Everything that changes the quantised graph; part of the artefact's name.
RECIPE: dict[str, Any] = {
    "exporter": "torch.onnx (torchscript)",
    "opset": 17,
    "mode": "dynamic",
    # int8 weights in 7 bits: u8 x s8 products summed pairwise in int16 saturate on AVX2/AVX-512 CPUs without
    # VNNI (ORT's documented caveat): full-range s8 gave a minimum cosine of 0.994 on ViT-B/32, 7-bit 0.9997.
    "weights": "int8 per-channel, reduced range",
    "quantised_ops": ["MatMul", "Gemm"],
}

_INT8_FOLDER = "int8"  # inside the cache folder


def _onnxruntime():
    try:
        import onnxruntime
        from onnxruntime.quantization import quantize_dynamic  # noqa: F401  (needs the onnx package too)
    except ImportError as exc:
        raise MissingExtraError(
            f"precision 'int8' needs ONNX Runtime, which is not installed ({exc}). "
            f"Install it with: {INSTALL_HINT} — or use --precision fp32."
        ) from exc
    return onnxruntime


class Int8ImageTower:
    """An ONNX Runtime session over a quantised image tower: pixels [B, 3, H, W] -> features [B, D]."""

    def __init__(self, path: Path):
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3  # ORT's own warnings go to stderr; errors still raise
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelLoadError(
                f"could not load the int8 image tower '{path}': {exc}. Delete that file; the next run rebuilds it."
            ) from exc
        self.path = path

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        feats = self.session.run(None, {"pixels": pixels.detach().float().contiguous().numpy()})[0]  # [B, D]
        return torch.from_numpy(feats)


def int8_image_tower(
    tower: torch.nn.Module, pixel_shape: tuple[int, ...], identity: dict, folder: Path | None
) -> Int8ImageTower:
    """The quantised ``tower`` for these weights: read from ``folder/int8/`` when an earlier run built it, else
    exported, quantised and written there (atomically: concurrent runs never see half a file). ``identity``:
    everything that identifies the fp32 image features (the backend's ``image_key_parts``). Without a folder
    (``--no-cache``) it is built in a temporary folder and not kept."""
    _onnxruntime()
    name = cache_key("int8-image-tower", **identity, recipe=RECIPE).split(":", 1)[1][:40] + ".onnx"
    if folder is None:
        with tempfile.TemporaryDirectory(prefix="vlmcls-int8-") as tmp:
            path = Path(tmp) / name
            _build(tower, pixel_shape, path)
            return Int8ImageTower(path)  # the session holds the graph; the file may go
    path = Path(folder) / _INT8_FOLDER / name
    if path.is_file():
        log.info("int8 image tower: reusing %s", path)
        return Int8ImageTower(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _build(tower, pixel_shape, path)
    return Int8ImageTower(path)


def _build(tower: torch.nn.Module, pixel_shape: tuple[int, ...], target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    log.warning("building the int8 image tower once (export + quantisation; later runs reuse %s)", target)
    with tempfile.TemporaryDirectory(prefix="vlmcls-int8-", dir=target.parent) as tmp:
        fp32_path, int8_path = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        try:
            # With autograd on, nn.MultiheadAttention takes its plain path; its no-grad fast path is one fused
            # op (aten::_native_multi_head_attention) the exporter cannot write as ONNX.
            with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporter's deprecation and tracer chatter
                example = torch.zeros(1, *pixel_shape)  # [1, 3, H, W], made outside inference mode
                torch.onnx.export(
                    tower.eval(), (example,), str(fp32_path), input_names=["pixels"], output_names=["features"],
                    dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
                    opset_version=RECIPE["opset"], dynamo=False,
                )
            with warnings.catch_warnings(), _without_ort_advice():
                warnings.simplefilter("ignore")
                quantize_dynamic(
                    str(fp32_path), str(int8_path), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                    op_types_to_quantize=list(RECIPE["quantised_ops"]),
                )
        except Exception as exc:
            raise ModelLoadError(
                f"could not build the int8 image tower ({type(exc).__name__}: {exc}). Use --precision fp32."
            ) from exc
        os.replace(int8_path, target)


class _without_ort_advice(logging.Filter):
    """Drops the advice ONNX Runtime's quantiser logs on the root logger ("consider pre-processing"): a library
    must not talk through the application's root logger, and the advice is not actionable by a vlmcls user."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    def __enter__(self) -> None:
        logging.getLogger().addFilter(self)

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeFilter(self)
