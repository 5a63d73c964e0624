"""Tiny open_clip and HF CLIP models built at test time: real code paths, no downloads."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch

TINY_OPEN_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
PREPROCESS_CFG = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}


def make_open_clip_dir(folder: Path, seed: int = 0) -> Path:
    """A local-dir: open_clip model (config + safetensors) with seeded random weights."""
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_OPEN_CLIP_CFG)
    cfg = {"model_cfg": TINY_OPEN_CLIP_CFG, "preprocess_cfg": {**PREPROCESS_CFG, "size": 32}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def write_clip_bpe_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """vocab.json and merges.txt for HF's CLIPTokenizer, built from the BPE vocabulary open_clip ships."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe(), "rt", encoding="utf-8") as fh:
        merges = fh.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab.extend("".join(m.split()) for m in merges)
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    assert len(vocab) == 49408 and open_clip  # same ids as open_clip's SimpleTokenizer
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_file, merges_file


def make_hf_clip_dir(folder: Path, seed: int = 0) -> Path:
    """A transformers CLIP folder (model, tokenizer, image processor) with seeded random weights."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "vocab_size": 49408, "max_position_embeddings": 77},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=32,
    )
    model = CLIPModel(config).eval()
    vocab_file, merges_file = write_clip_bpe_tokenizer_files(folder / "_bpe")
    tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file))
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def make_hf_siglip_dir(folder: Path, seed: int = 0) -> Path:
    """A transformers SigLIP folder with a known logit scale (10) and bias (-2)."""
    import math

    from transformers import CLIPTokenizer, SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    torch.manual_seed(seed)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = SiglipConfig(
        text_config={**small, "vocab_size": 49408, "max_position_embeddings": 16},
        vision_config={**small, "image_size": 32, "patch_size": 8},
    )
    model = SiglipModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-2.0)
    model.save_pretrained(folder)
    vocab_file, merges_file = write_clip_bpe_tokenizer_files(folder / "_bpe")
    tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file))
    image_processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder
