"""Model backends behind one small protocol: open_clip and HF transformers (CLIP, SigLIP).

A backend turns preprocessed pixels into image features and strings into text features. It does not normalise:
:mod:`vlmcls.encode.embeddings` is the one place features are L2-normalised.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path
from typing import Callable, Sequence

import torch

from .backend import ModelBackend, known_weights_fingerprint, precision_name
from .store import Store
from ..errors import ConfigError, ModelLoadError
from .model_ids import ModelSpec, parse_model_id

__all__ = ["ModelBackend", "known_weights_fingerprint", "load_model", "precision_name", "resolve_device",
           "resolve_precision"]

log = logging.getLogger(__name__)

_OFFLINE_HINT = (
    "If this machine cannot reach the hub, download the weights where you have network and point at the copy: "
    "'local-dir:/path/folder' (open_clip_config.json + open_clip_model.safetensors), "
    "'ARCH:/path/to/checkpoint.pt' (open_clip), or 'hf:/path/folder' (transformers save_pretrained)."
)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; ``cuda[:N]``, ``mps`` and ``cpu`` are checked to exist."""
    device = (device or "auto").strip().lower()
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device '{device}'. Valid: auto, cpu, cuda, cuda:N, mps.") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{device}' asked for, but CUDA is not available here. Use --device cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device '{device}': only {torch.cuda.device_count()} CUDA device(s) present.")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device '{device}' asked for, but MPS is not available here. Use --device cpu.")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device '{device}'. Valid: auto, cpu, cuda, cuda:N, mps.")
    return dev


_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.float32}


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """fp32 | fp16 | bf16 | int8 -> the compute dtype. On CPU fp16/bf16 become fp32 (half precision is slower
    there and fp16 is inexact); int8 runs the image tower through ONNX Runtime (:mod:`vlmcls.encode.quantize`), CPU only."""
    key = precision_name(precision)
    if key == "int8" and device.type != "cpu":
        raise ConfigError(f"precision 'int8' runs on CPU only, but the device is '{device}'. "
                          "Use --device cpu with int8, or fp16/bf16 on an accelerator.")
    if device.type == "cpu" and key in ("fp16", "bf16"):
        log.warning("precision '%s' ignored on CPU: using fp32 (faster and exact there)", key)
        return torch.float32
    return _DTYPES[key]


def _length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, so each batch pads only to its own longest text."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class _PilToUint8:
    """The PIL steps of a torchvision pipeline, then the pixels as a uint8 tensor [3, H, W] (no float yet)."""

    def __init__(self, steps: Sequence[Callable]):
        self.steps = list(steps)

    def __call__(self, image) -> torch.Tensor:
        import numpy as np

        for step in self.steps:
            image = step(image)
        if getattr(image, "mode", None) != "RGB":
            image = image.convert("RGB")
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # [3, H, W]


class _Uint8ToNormalized:
    """torchvision's ToTensor then Normalize, on a uint8 batch [B, 3, H, W], with the same operations in the same
    order (to float32, divide by 255, subtract the mean, divide by the std), so results are bit-identical."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        # in place after the one new tensor: a second batch-sized allocation cost 12× the arithmetic on a CPU
        x = pixels.to(dtype=torch.float32).div_(255)
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return x.sub_(mean[None, :, None, None]).div_(std[None, :, None, None])


def _split_torchvision_preprocess(preprocess) -> tuple[Callable, Callable] | None:
    """Split ``Compose([PIL steps…, ToTensor, Normalize])`` into (PIL -> uint8, uint8 batch -> normalised), or None
    for any other shape (then the full transform runs in the decode workers, as before)."""
    steps = getattr(preprocess, "transforms", None)
    if not steps or len(steps) < 3:
        return None
    to_tensor, normalize = steps[-2], steps[-1]
    if type(to_tensor).__name__ not in ("ToTensor", "MaybeToTensor") or type(normalize).__name__ != "Normalize":
        return None
    if getattr(normalize, "inplace", False) not in (False, True) or len(normalize.mean) != 3:
        return None
    split = _PilToUint8(steps[:-2]), _Uint8ToNormalized(normalize.mean, normalize.std)
    # Trust it only if it reproduces the full transform exactly on a probe image.
    import numpy as np
    from PIL import Image

    probe = Image.fromarray(np.random.default_rng(0).integers(0, 256, (193, 257, 3), dtype=np.uint8))
    try:
        same = torch.equal(split[1](split[0](probe)[None])[0], preprocess(probe))
    except Exception:  # a step that is not PIL-in, PIL-out
        same = False
    if not same:
        log.info("preprocessing %r kept whole: its uint8 split does not reproduce it", type(preprocess).__name__)
    return split if same else None


class _OpenClipImageTower(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)  # [B, D]


class _HFImageTower(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return HFBackend._features(self.model.get_image_features(pixel_values=pixels))  # [B, D]


@functools.lru_cache(maxsize=16)
def _open_clip_tokenizer(name: str, config_stamp: tuple | None):
    """open_clip's tokenizer for a model name, built once per process: building it reads and parses the 49k-merge
    BPE file (~0.2 s), as long again as building a small model; tokenizers hold no per-model state.
    ``config_stamp`` keys a local-dir: tokenizer by its config file too, so an edited folder builds a new one."""
    import open_clip

    return open_clip.get_tokenizer(name)


def _config_stamp(spec: ModelSpec) -> tuple | None:
    """(path, size, mtime) of a local-dir: model's open_clip config (which names its tokenizer), else None."""
    if spec.source != "local-dir":
        return None
    config = Path(spec.name) / "open_clip_config.json"
    try:
        stat = config.stat()
    except OSError:
        return (str(config),)
    return (str(config), stat.st_size, stat.st_mtime_ns)


class OpenClipBackend(ModelBackend):
    """open_clip models: built-in architectures, pretrained tags, checkpoints, hf-hub: and local-dir:."""

    def __init__(self, spec: ModelSpec, device: torch.device, dtype: torch.dtype, store: "Store | None" = None,
                 precision: str = "fp32"):
        import open_clip

        self.spec, self.device, self.dtype, self._store, self.precision = spec, device, dtype, store, precision
        if spec.source == "builtin":
            name, pretrained = spec.name, spec.pretrained
        else:
            name, pretrained = f"{spec.source}:{spec.name}", None
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
            self.tokenizer = _open_clip_tokenizer(name, _config_stamp(spec))
        except Exception as exc:
            raise ModelLoadError(f"could not load open_clip model '{spec.canonical}': {exc}. {_OFFLINE_HINT}") from exc
        if spec.source == "builtin" and pretrained is None:
            log.warning("model '%s' has no pretrained tag: its weights are random (fine for tests/benchmarks)", name)
        self.model = model.eval()
        self.preprocess = preprocess
        self.preprocess_fingerprint = hashlib.sha256(repr(preprocess).encode()).hexdigest()[:16]
        self.weights_fingerprint = self._weights_fingerprint()
        self.logit_scale = float(model.logit_scale.exp().item())
        bias = getattr(model, "logit_bias", None)
        self.logit_bias = float(bias.item()) if bias is not None else None
        self._text = self._trimmable_text_tower()
        self._split: tuple | None = None  # (PIL stage, device stage) of preprocess, worked out on first use

    def _weights_fingerprint(self) -> str:
        known = known_weights_fingerprint(self.spec, self._store)
        if known is not None:
            return known
        # Random init differs per seed: identify these weights by a sample of every tensor.
        h = hashlib.sha256()
        for name, tensor in self.model.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().flatten()[:4096].float().cpu().numpy().tobytes())
        return "random-" + h.hexdigest()[:32]

    def _trimmable_text_tower(self):
        """The text tower's parts when it is causal and pools at the end-of-text token, else None.

        Then a token never attends to positions after it, so cutting every sequence to the batch's longest gives
        exactly the features of the full 77-token pass, at a fraction of the cost.
        """
        m = self.model
        tower = m.text if hasattr(m, "text") else m
        needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
        if not all(hasattr(tower, a) for a in needed) or getattr(tower, "attn_mask", None) is None:
            return None
        if getattr(tower, "cls_emb", None) is not None or getattr(tower, "use_pad_mask", False):
            return None
        pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", "argmax"))
        if pool not in ("argmax", "eos", "first"):
            return None
        return tower, pool

    def uint8_preprocess(self) -> Callable | None:
        if self._split is None:
            self._split = _split_torchvision_preprocess(self.preprocess) or ()
        return self._split[0] if self._split else None

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.device, non_blocking=True)
        if pixels.dtype == torch.uint8:
            if self.uint8_preprocess() is None:
                raise ConfigError("this model's preprocessing cannot take uint8 pixels")
            pixels = self._split[1](pixels)
        if self.precision == "int8":
            return self._encode_images_int8(pixels)
        with self._autocast():
            feats = self.model.encode_image(pixels)
        return feats.float().cpu()

    def _image_tower(self) -> torch.nn.Module:
        return _OpenClipImageTower(self.model)

    def _encode_tokens_trimmed(self, tokens: torch.Tensor) -> torch.Tensor:
        tower, pool = self._text
        positions = torch.arange(tokens.shape[1])
        last_nonpad = ((tokens != 0) * positions).max(dim=1).values  # [B]
        length = int(last_nonpad.max().item()) + 1
        tokens = tokens[:, :length].to(self.device)  # [B, L]
        cast = tower.transformer.get_cast_dtype()
        x = tower.token_embedding(tokens).to(cast) + tower.positional_embedding[:length].to(cast)  # [B, L, W]
        x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length].contiguous())
        x = tower.ln_final(x)
        from open_clip.transformer import text_global_pool

        eos = getattr(tower, "text_eos_id", getattr(tower, "eos_id", None))
        pooled = text_global_pool(x, tokens, pool, eos_token_id=eos)  # [B, W]
        proj = tower.text_projection
        if proj is not None:
            pooled = proj(pooled) if isinstance(proj, torch.nn.Module) else pooled @ proj
        return pooled  # [B, D]

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        if not texts:
            raise ConfigError("no texts to encode")
        tokens = self.tokenizer(list(texts))  # [T, ctx]
        if self._text is None:
            batches = [list(range(i, min(i + batch_size, len(texts)))) for i in range(0, len(texts), batch_size)]
        else:
            lengths = ((tokens != 0) * torch.arange(tokens.shape[1])).max(dim=1).values.tolist()
            batches = _length_sorted_batches(lengths, batch_size)
        out: torch.Tensor | None = None
        for idx in batches:
            with self._autocast():
                if self._text is None:
                    feats = self.model.encode_text(tokens[idx].to(self.device))
                else:
                    feats = self._encode_tokens_trimmed(tokens[idx])
            feats = feats.float().cpu()
            if out is None:
                out = torch.empty(len(texts), feats.shape[1])
            out[idx] = feats
        return out


class HFBackend(ModelBackend):
    """HF transformers CLIP and SigLIP (hub id or a save_pretrained folder)."""

    def __init__(self, spec: ModelSpec, device: torch.device, dtype: torch.dtype, store: "Store | None" = None,
                 precision: str = "fp32"):
        from transformers import AutoModel, AutoProcessor

        self.spec, self.device, self.dtype, self._store, self.precision = spec, device, dtype, store, precision
        try:
            self.model = AutoModel.from_pretrained(spec.name).to(device).eval()
            self.processor = AutoProcessor.from_pretrained(spec.name)
        except Exception as exc:
            raise ModelLoadError(f"could not load transformers model '{spec.canonical}': {exc}. {_OFFLINE_HINT}") from exc
        if not (hasattr(self.model, "get_image_features") and hasattr(self.model, "get_text_features")):
            raise ModelLoadError(
                f"'{spec.canonical}' is a {type(self.model).__name__}, not a CLIP-style model with image and text towers."
            )
        self.is_siglip = "siglip" in type(self.model).__name__.lower()
        text_cfg = getattr(self.model.config, "text_config", None)
        self._siglip_length = int(getattr(text_cfg, "max_position_embeddings", 64) or 64)
        self.tokenizer = self.processor.tokenizer
        self.image_processor = self.processor.image_processor
        self.preprocess = self._preprocess_one
        self.preprocess_fingerprint = hashlib.sha256(self.image_processor.to_json_string().encode()).hexdigest()[:16]
        self.weights_fingerprint = self._weights_fingerprint()
        self.logit_scale = float(self.model.logit_scale.exp().item())
        bias = getattr(self.model, "logit_bias", None)
        self.logit_bias = float(bias.item()) if bias is not None else None

    def _weights_fingerprint(self) -> str:
        known = known_weights_fingerprint(self.spec, self._store)
        if known is not None:
            return known
        commit = getattr(self.model.config, "_commit_hash", None)
        return f"hub:{self.spec.name}@{commit or 'main'}"

    def _preprocess_one(self, image) -> torch.Tensor:
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]  # [3, H, W]

    @staticmethod
    def _features(output) -> torch.Tensor:
        # transformers < 5 returns a tensor; 5.x returns an output object whose pooler_output is projected
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.precision == "int8":
            return self._encode_images_int8(pixels)
        with self._autocast():
            feats = self._features(self.model.get_image_features(pixel_values=pixels.to(self.device)))
        return feats.float().cpu()

    def _image_tower(self) -> torch.nn.Module:
        return _HFImageTower(self.model)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        if not texts:
            raise ConfigError("no texts to encode")
        texts = list(texts)
        if self.is_siglip:
            # SigLIP was trained on max_length padding and pools the last position: padding must stay.
            batches = [list(range(i, min(i + batch_size, len(texts)))) for i in range(0, len(texts), batch_size)]
        else:
            lengths = [len(ids) for ids in self.tokenizer(texts, truncation=True)["input_ids"]]
            batches = _length_sorted_batches(lengths, batch_size)
        out: torch.Tensor | None = None
        for idx in batches:
            chunk = [texts[i] for i in idx]
            if self.is_siglip:
                enc = self.tokenizer(chunk, padding="max_length", max_length=self._siglip_length, truncation=True, return_tensors="pt")
            else:
                enc = self.tokenizer(chunk, padding=True, truncation=True, return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            with self._autocast():
                feats = self._features(self.model.get_text_features(**enc)).float().cpu()
            if out is None:
                out = torch.empty(len(texts), feats.shape[1])
            out[idx] = feats
        return out


def _hub_repo(spec: ModelSpec) -> str | None:
    """The HF hub repository this model's weights come from, or None when loading it downloads nothing from the hub."""
    if spec.source in ("hf-hub", "hub"):
        return spec.name
    if spec.source == "builtin" and spec.pretrained and not Path(spec.pretrained).expanduser().is_file():
        import open_clip

        cfg = open_clip.get_pretrained_cfg(spec.name, spec.pretrained) or {}
        return str(cfg["hf_hub"]).strip("/") or None if cfg.get("hf_hub") else None
    return None


def check_hub_reachable(spec: ModelSpec) -> None:
    """Fail in seconds, with one message, when a model must come from the HF hub and the hub cannot be reached
    (offline mode, no network): the hub libraries would otherwise retry for most of a minute."""
    from ..hub import hub_endpoint, hub_unreachable_reason, in_hub_cache

    repo = _hub_repo(spec)
    if repo is None:
        return
    if in_hub_cache("models", repo, "snapshots"):
        return  # downloaded before: the hub libraries load it from their cache
    endpoint = hub_endpoint()
    reason = hub_unreachable_reason(endpoint)
    if reason is not None:
        raise ModelLoadError(
            f"model '{spec.canonical}' must be downloaded from the HF hub ({endpoint}, repository '{repo}'), "
            f"but {reason} and it is not in the local hub cache. Download it where you have network and point "
            "at the copy: 'local-dir:/path/folder', 'ARCH:/path/to/checkpoint.pt' or 'hf:/path/folder'."
        )


def load_model(model_id: str, device: str = "auto", precision: str = "fp32", store: "Store | None" = None) -> ModelBackend:
    """Load a model by id (see :mod:`vlmcls.encode.model_ids`) on a device, at a precision. With a ``store``, the content
    hashes of local weight files are kept there, so later loads do not read the weights twice."""
    spec = parse_model_id(model_id)
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    check_hub_reachable(spec)
    backend_cls = OpenClipBackend if spec.backend == "open_clip" else HFBackend
    return backend_cls(spec, dev, dtype, store, precision_name(precision))
