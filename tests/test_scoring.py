import pytest
import torch

from vlmcls.api import Classifier
from vlmcls.encode.embeddings import l2_normalize
from vlmcls.errors import ConfigError
from vlmcls.scoring import ClassTexts, class_text_weights, compute_logits, probabilities


def _unit(*shape):
    return l2_normalize(torch.randn(*shape, dtype=torch.float64))


def test_mean_similarity_rule_is_the_mean_of_per_sentence_similarities():
    torch.manual_seed(0)
    image_feats = _unit(5, 8)  # [N, D]
    per_class = {"a": 3, "b": 1, "c": 4}
    texts = ClassTexts.from_mapping({c: [f"{c}{j}" for j in range(n)] for c, n in per_class.items()})
    text_feats = _unit(len(texts.texts), 8)  # [T, D]
    weights = class_text_weights(text_feats, texts.owner, 3, "mean_similarity")
    logits = compute_logits(image_feats, weights, scale=100.0)
    for c in range(3):
        sims = image_feats @ text_feats[texts.owner == c].T  # [N, T_c]
        torch.testing.assert_close(logits[:, c], 100.0 * sims.mean(dim=1), atol=1e-10, rtol=0)
    assert not torch.allclose(weights.norm(dim=1), torch.ones(3, dtype=torch.float64))  # NOT renormalised


def test_mean_embedding_rule_renormalises_the_mean():
    torch.manual_seed(1)
    text_feats = _unit(6, 4)
    owner = torch.tensor([0, 0, 1, 1, 1, 2])
    weights = class_text_weights(text_feats, owner, 3, "mean_embedding")
    for c in range(3):
        expected = text_feats[owner == c].mean(0)
        torch.testing.assert_close(weights[c], expected / expected.norm(), atol=1e-12, rtol=0)


def test_unknown_aggregation_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="mean_similarity, mean_embedding"):
        class_text_weights(_unit(2, 4), torch.tensor([0, 1]), 2, "max")


def test_sigmoid_and_softmax_probabilities():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    assert probabilities(logits, "softmax").sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(probabilities(logits, "sigmoid"), torch.sigmoid(logits))


def test_siglip_is_scored_with_sigmoid_and_its_bias(tmp_path):
    from PIL import Image
    from tiny_models import make_hf_siglip_dir

    clf = Classifier(f"hf:{make_hf_siglip_dir(tmp_path / 'siglip')}", device="cpu")
    assert clf.model.score_rule == "sigmoid" and clf.model.logit_bias == pytest.approx(-2.0)
    Image.new("RGB", (40, 40), "red").save(tmp_path / "red.png")
    result = clf.classify([tmp_path / "red.png"], ["apple", "sky", "grass"], method="name")
    weights = clf.text_weights(ClassTexts.from_mapping({c: [c] for c in ["apple", "sky", "grass"]}), "mean_embedding")
    feats = clf.encode_images([tmp_path / "red.png"]).feats
    expected = torch.sigmoid(10.0 * feats @ weights.T - 2.0)
    torch.testing.assert_close(result.probs, expected, atol=1e-5, rtol=0)
    assert result.probs.sum().item() != pytest.approx(1.0, abs=1e-3)  # independent per class, not a softmax
