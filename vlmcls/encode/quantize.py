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
only MatMul/Gemm/Attention are quantised: convolutions (the patch embedding, ResNet towers) stay fp32, where ORT's
integer convolution is slow and hurts agreement most.

Attention: a batch-first ``nn.MultiheadAttention`` exports as packed projections, transposes and gathers that ORT
cannot fuse (a tenth of the int8 run time went to Transpose and Gather). For the export it is swapped for
:class:`_PlainAttention`, the same arithmetic written as separate q/k/v projections and matmuls, which ORT's
transformer optimizer fuses into one ``Attention`` node per block (quantised as ``QAttention``). The fused fp32 graph
is checked against the unfused one on a probe batch and dropped if they differ.

The file is named by a hash of the model's identity (model id, weights fingerprint, preprocessing) and the recipe,
so a re-run loads it instead of exporting and quantising again.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .store import cache_key
from ..errors import MissingExtraError, ModelLoadError

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
    "attention": "plain q/k/v matmuls, fused by onnxruntime.transformers (vit) when outputs match",
    "quantised_ops": ["MatMul", "Gemm", "Attention"],
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
        # ORT's idle workers spin by default; beside vlmcls's decode threads that spinning takes the CPU they need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
    (``--cache off``) it is built in a temporary folder and not kept."""
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
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    log.warning("building the int8 image tower once (export + quantisation; later runs reuse %s)", target)
    with tempfile.TemporaryDirectory(prefix="vlmcls-int8-", dir=target.parent) as tmp:
        fp32_path, int8_path = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        try:
            # With autograd on, nn.MultiheadAttention takes its plain path; its no-grad fast path is one fused
            # op (aten::_native_multi_head_attention) the exporter cannot write as ONNX.
            with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings(), \
                    _plain_attention(tower, pixel_shape) as shape:
                warnings.simplefilter("ignore")  # the exporter's deprecation and tracer chatter
                example = torch.zeros(1, *pixel_shape)  # [1, 3, H, W], made outside inference mode
                torch.onnx.export(
                    tower.eval(), (example,), str(fp32_path), input_names=["pixels"], output_names=["features"],
                    dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
                    opset_version=RECIPE["opset"], dynamo=False,
                )
            source = _fused(fp32_path, Path(tmp) / "fused.onnx", shape, pixel_shape)
            with warnings.catch_warnings(), _without_ort_advice():
                warnings.simplefilter("ignore")
                quantize_dynamic(
                    str(source), str(int8_path), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                    op_types_to_quantize=list(RECIPE["quantised_ops"]),
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # types of fused nodes' outputs
                )
        except Exception as exc:
            raise ModelLoadError(
                f"could not build the int8 image tower ({type(exc).__name__}: {exc}). Use --precision fp32."
            ) from exc
        os.replace(int8_path, target)


class _PlainAttention(torch.nn.Module):
    """Export-only stand-in for a batch-first ``nn.MultiheadAttention`` (same weights, same arithmetic): separate
    q/k/v projections, softmax(q k^T / sqrt(d)) v, the output projection. Calls it does not cover (masks) go to the
    original module."""

    def __init__(self, mha: torch.nn.MultiheadAttention):
        super().__init__()
        self.mha = mha
        width, self.heads = mha.embed_dim, mha.num_heads
        self.head_dim = width // self.heads
        weight, bias = mha.in_proj_weight, mha.in_proj_bias
        self.q, self.k, self.v = (torch.nn.Linear(width, width) for _ in range(3))
        for i, linear in enumerate((self.q, self.k, self.v)):  # views of the packed projection: no copy
            linear.weight = torch.nn.Parameter(weight[i * width:(i + 1) * width], requires_grad=False)
            linear.bias = torch.nn.Parameter(bias[i * width:(i + 1) * width], requires_grad=False)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            return self.mha(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                            attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
        batch, n_query, width = query.shape
        n_key = key.shape[1]
        q = self.q(query).reshape(batch, n_query, self.heads, self.head_dim).permute(0, 2, 1, 3)
        k = self.k(key).reshape(batch, n_key, self.heads, self.head_dim).permute(0, 2, 3, 1)
        v = self.v(value).reshape(batch, n_key, self.heads, self.head_dim).permute(0, 2, 1, 3)
        weights = torch.softmax(torch.matmul(q, k) / math.sqrt(self.head_dim), dim=-1)  # [B, h, N, M]
        out = torch.matmul(weights, v).permute(0, 2, 1, 3).reshape(batch, n_query, width)
        if not need_weights:
            return self.mha.out_proj(out), None
        return self.mha.out_proj(out), (weights.mean(1) if average_attn_weights else weights)


class _PatchMatMul(torch.nn.Module):
    """Export-only stand-in for a patch embedding (a ``Conv2d`` whose stride is its kernel, no padding): the same
    sums as one matmul over flattened patches, which quantises like the other matmuls (ORT's integer convolution
    is slow)."""

    def __init__(self, conv: torch.nn.Conv2d):
        super().__init__()
        self.conv = conv
        self.patch = conv.kernel_size[0]

    @property
    def weight(self) -> torch.Tensor:  # what callers read off the conv (transformers reads its dtype)
        return self.conv.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        p, rows, cols = self.patch, x.shape[2] // self.patch, x.shape[3] // self.patch
        patches = x.reshape(batch, channels, rows, p, cols, p).permute(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(batch, rows * cols, channels * p * p)  # [B, L, C·p·p], the conv's weight order
        out = torch.matmul(patches, self.conv.weight.reshape(self.conv.out_channels, -1).t())
        if self.conv.bias is not None:
            out = out + self.conv.bias
        return out.reshape(batch, rows, cols, -1).permute(0, 3, 1, 2)  # [B, D, rows, cols], as the conv gives


def _is_patch_conv(module: torch.nn.Module) -> bool:
    return (type(module) is torch.nn.Conv2d and module.kernel_size == module.stride and module.kernel_size[0] ==
            module.kernel_size[1] and module.padding in ((0, 0), 0, "valid") and module.groups == 1
            and module.dilation == (1, 1) and module.padding_mode == "zeros")


def _is_plain_mha(module: torch.nn.Module) -> bool:
    return (isinstance(module, torch.nn.MultiheadAttention) and module.batch_first and module._qkv_same_embed_dim
            and module.in_proj_bias is not None and module.bias_k is None)


@contextmanager
def _plain_attention(tower: torch.nn.Module, pixel_shape: tuple[int, ...]):
    """Swap ``tower``'s batch-first ``nn.MultiheadAttention`` modules for :class:`_PlainAttention` and its patch
    embeddings for :class:`_PatchMatMul` for the export, and put them back after. Yields (heads, width) of the
    first attention swapped, or None."""
    swapped, heads = [], None
    for parent in list(tower.modules()):
        for name, child in list(parent.named_children()):
            if _is_plain_mha(child):
                heads = heads or (child.num_heads, child.embed_dim)
                setattr(parent, name, _PlainAttention(child))
            elif _is_patch_conv(child) and all(side % child.kernel_size[0] == 0 for side in pixel_shape[1:]):
                setattr(parent, name, _PatchMatMul(child))
            else:
                continue
            swapped.append((parent, name, child))
    try:
        yield heads
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def _fused(fp32_path: Path, fused_path: Path, shape: tuple[int, int] | None, pixel_shape: tuple[int, ...]) -> Path:
    """The graph with ORT's transformer fusions (Attention, SkipLayerNormalization, BiasGelu) when it gives the
    unfused graph's outputs on a probe batch; else the unfused graph."""
    ort = _onnxruntime()
    try:
        from onnxruntime.transformers import optimizer

        heads, width = shape or (0, 0)  # 0: let the optimizer read them from the graph
        with _quiet_ort_loggers():
            optimizer.optimize_model(str(fp32_path), model_type="vit", num_heads=heads, hidden_size=width,
                                     ).save_model_to_file(str(fused_path))
        probe = torch.randn(2, *pixel_shape, generator=torch.Generator().manual_seed(0)).numpy()
        outputs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"pixels": probe})[0]
                   for p in (fp32_path, fused_path)]
    except Exception as exc:  # an optimizer that cannot handle this graph costs the fusion, not the build
        log.info("int8: transformer fusions skipped (%s: %s)", type(exc).__name__, exc)
        return fp32_path
    scale = float(abs(outputs[0]).max()) or 1.0
    if outputs[0].shape != outputs[1].shape or float(abs(outputs[0] - outputs[1]).max()) > 1e-4 * scale:
        log.info("int8: transformer fusions changed the outputs; quantising the unfused graph")
        return fp32_path
    return fused_path


@contextmanager
def _quiet_ort_loggers():
    """The transformer optimizer logs its progress at INFO/WARNING on its own loggers: not for vlmcls users."""
    loggers = [logging.getLogger(name) for name in ("onnxruntime.transformers", "fusion_base", "onnx_model",
                                                    "optimizer", "fusion_utils", "onnx_model_bert")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class _without_ort_advice(logging.Filter):
    """Drops the advice ONNX Runtime's quantiser logs on the root logger ("consider pre-processing"): a library
    must not talk through the application's root logger, and the advice is not actionable by a vlmcls user."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    def __enter__(self) -> None:
        logging.getLogger().addFilter(self)

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeFilter(self)
