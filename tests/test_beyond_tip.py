"""GDA, TransCLIP and TDA (issue 29): each paper's / reference's rule written out in full on a tiny hand-made case and
compared with the library through the method pipeline, to 1e-6; and the bad inputs each must survive."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from fake_methods import scripted_head
from vlmcls.adapters.metrics import expected_calibration_error
from vlmcls.errors import ConfigError
from vlmcls.methods import METHODS, MethodOptions, RunContext, TextSide, parse_spec, run_spec

CLASSES = ["cat", "dog", "car"]
TEXT = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2, 0.0, 0.1], [0.1, 1.0, 0.3, 0.0],
                                                   [0.0, 0.2, 1.0, 0.4]], dtype=torch.float64), dim=1)  # [C, D]


def unit(rows) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.as_tensor(rows, dtype=torch.float64), dim=1)


def query_feats(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    centres = TEXT[torch.arange(count) % 3]
    return torch.nn.functional.normalize(centres + 0.6 * torch.randn(count, 4, generator=generator, dtype=torch.float64), dim=1)


@pytest.fixture
def linear_head(monkeypatch):
    """A head whose logits are 100 · f Tᵀ with the fixed T above, so every test knows the zero-shot logits."""
    record = scripted_head("lin", lambda feats, names: 100.0 * feats.double() @ TEXT.T)

    def prepare(*args):
        stage = record.prepare(*args)
        stage.weights = TEXT  # the head's text weights [C, D] (TransCLIP's StatA anchor reads them)
        return stage

    monkeypatch.setitem(METHODS, "lin", dataclasses.replace(record, prepare=prepare))
    return "lin"


@dataclass
class _Record:
    id: str
    label: str | None


@dataclass
class _Support:
    records: list
    feats: torch.Tensor
    errors: list


def context(options: MethodOptions, support: tuple[torch.Tensor, list[str]] | None = None,
            score_rule: str = "softmax") -> RunContext:
    def encode_images(folder):
        feats, labels = support
        return _Support([_Record(f"{folder}/{i}", label) for i, label in enumerate(labels)], feats, [])

    def encode_texts(texts):
        return torch.nn.functional.normalize(torch.ones(len(texts), 4), dim=-1)

    return RunContext(TextSide(encode_texts, 100.0, None, score_rule), list(CLASSES), options, encode_images=encode_images)


# -- GDA -------------------------------------------------------------------------------------------------------

SHOTS = unit([[1.0, 0.1, 0.0, 0.0], [0.9, 0.0, 0.2, 0.1], [0.8, 0.3, 0.0, 0.2],
              [0.1, 1.0, 0.1, 0.0], [0.0, 0.8, 0.0, 0.3], [0.2, 0.9, 0.3, 0.0],
              [0.0, 0.1, 1.0, 0.0], [0.1, 0.0, 0.7, 0.5], [0.3, 0.2, 0.9, 0.1]])
SHOT_LABELS = ["cat"] * 3 + ["dog"] * 3 + ["car"] * 3


def reference_gda(shots: torch.Tensor, labels: list[str], queries: torch.Tensor, alpha: float) -> torch.Tensor:
    """mrflogs/ICLR24 main_few_shots.py, written out: means, the centred shots, the KS-shrunk precision, W and b."""
    dim = shots.shape[1]
    means = torch.stack([shots[[i for i, l in enumerate(labels) if l == c]].mean(0) for c in CLASSES])
    centred = torch.stack([shots[i] - means[CLASSES.index(l)] for i, l in enumerate(labels)])
    n = centred.shape[0]
    mean_row = centred.mean(0)
    cov = sum(torch.outer(r - mean_row, r - mean_row) for r in centred) / (n - 1)  # unbiased
    precision = dim * torch.linalg.inv((n - 1) * cov + torch.trace(cov) * torch.eye(dim, dtype=torch.float64))
    weights = means @ precision  # W as [C, D]
    bias = torch.tensor([math.log(1 / 3) - 0.5 * float(means[k] @ precision @ means[k]) for k in range(3)])
    return 100.0 * queries @ TEXT.T + alpha * (queries @ weights.T + bias)


def test_gda_is_the_reference_estimator_added_to_the_zero_shot_logits(linear_head):
    queries = query_feats(7)
    options = MethodOptions(methods={"gda": {"support": "shots", "alpha": 0.01}})
    out = run_spec(parse_spec("lin+gda"), context(options, (SHOTS, SHOT_LABELS)), queries.float())
    expected = reference_gda(SHOTS, SHOT_LABELS, queries.float().double(), 0.01)
    torch.testing.assert_close(out.logits.double(), expected.float().double(), atol=1e-3, rtol=1e-6)  # float32 out
    from vlmcls.adapters.gda import fit_gda, gda_logits, label_columns

    model = fit_gda(SHOTS, label_columns(SHOT_LABELS, CLASSES), 3)
    exact = gda_logits(queries, 100.0 * queries @ TEXT.T, model, 0.01)
    torch.testing.assert_close(exact, reference_gda(SHOTS, SHOT_LABELS, queries, 0.01), atol=1e-6, rtol=1e-9)


def test_gda_picks_alpha_by_held_out_shots_with_the_reference_grid_and_tie_rule(linear_head):
    from vlmcls.adapters.gda import ALPHA_GRID, choose_alpha, fit_gda, gda_logits, label_columns

    columns = label_columns(SHOT_LABELS, CLASSES)
    zero_shot = 100.0 * SHOTS @ TEXT.T
    # written out: F = min(4, 3) = 3 folds; fold j holds out each class's shot j, fits on the other two
    correct = {a: 0 for a in ALPHA_GRID}
    for j in range(3):
        held = torch.tensor([i % 3 == j for i in range(9)])
        model = fit_gda(SHOTS[~held], columns[~held], 3)
        for a in ALPHA_GRID:
            pred = gda_logits(SHOTS[held], zero_shot[held], model, a).argmax(1)
            correct[a] += int((pred == columns[held]).sum())
    best, best_acc = 0.1, 0.0
    for a in ALPHA_GRID:
        if correct[a] / 9 > best_acc:
            best, best_acc = a, correct[a] / 9
    choice = choose_alpha(SHOTS, columns, 3, zero_shot)
    assert (choice.alpha, choice.accuracy, choice.folds) == (best, pytest.approx(best_acc), 3)

    out = run_spec(parse_spec("lin+gda"), context(MethodOptions(methods={"gda": {"support": "s"}}), (SHOTS, SHOT_LABELS)),
                   query_feats(5).float())
    assert out.info["gda_alpha"] == best and out.info["gda_support_images"] == 9


def test_gda_with_one_shot_per_class_adds_nothing_and_says_so(linear_head):
    one = [0, 3, 6]
    queries = query_feats(6).float()
    plain = run_spec(parse_spec("lin"), context(MethodOptions()), queries)
    out = run_spec(parse_spec("lin+gda"), context(MethodOptions(methods={"gda": {"support": "s"}}),
                                                  (SHOTS[one], ["cat", "dog", "car"])), queries)
    assert out.logits.argmax(1).tolist() == plain.logits.argmax(1).tolist()
    torch.testing.assert_close(out.probs.double(), plain.probs.double(), atol=1e-6, rtol=0)  # a constant added to every class
    assert any("one shot per class" in w.get("warning", "") for w in out.warnings)


def test_gda_without_support_or_without_shots_of_a_class_is_a_clear_error(linear_head):
    queries = query_feats(3).float()
    with pytest.raises(ConfigError, match=r"refiner 'gda' needs option gda\.support"):
        run_spec(parse_spec("lin+gda"), context(MethodOptions()), queries)
    with pytest.raises(ConfigError, match=r"every class; 1 have none: 'car'"):
        run_spec(parse_spec("lin+gda"), context(MethodOptions(methods={"gda": {"support": "s"}}),
                                                (SHOTS[:6], SHOT_LABELS[:6])), queries)
    with pytest.raises(ConfigError, match=r"not in the class list: 'bus'"):
        run_spec(parse_spec("lin+gda"), context(MethodOptions(methods={"gda": {"support": "s"}}),
                                                (SHOTS, SHOT_LABELS[:8] + ["bus"])), queries)


# -- TransCLIP -------------------------------------------------------------------------------------------------


def reference_transclip(feats: torch.Tensor, logits: torch.Tensor, lam=1.0, k=3, iterations=10, sweeps=5, T=50.0,
                        top=8) -> torch.Tensor:
    """The paper's BMM updates with the released constants, one image and one class at a time."""
    n, d = feats.shape
    c = logits.shape[1]
    f = feats.tolist()
    y = torch.softmax(logits, 1).tolist()
    z = [row[:] for row in y]

    def normalise(v):
        s = math.sqrt(sum(x * x for x in v))
        return [x / s for x in v]

    mu = []
    for kk in range(c):
        order = sorted(range(n), key=lambda i: -z[i][kk])[:min(top, n)]
        mu.append(normalise([sum(z[i][kk] * f[i][t] for i in order) for t in range(d)]))
    var = [1.0 / d] * d
    cos = [[sum(a * b for a, b in zip(f[i], f[j])) for j in range(n)] for i in range(n)]
    w = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in sorted((j for j in range(n) if j != i), key=lambda j: -cos[i][j])[:min(k, n - 1)]:
            w[i][j] = cos[i][j]
    for step in range(iterations + 1):
        gmm = [[-0.5 * sum((f[i][t] - mu[kk][t]) ** 2 / var[t] for t in range(d)) for kk in range(c)] for i in range(n)]
        for _ in range(sweeps):
            new = []
            for i in range(n):
                a = [gmm[i][kk] / T + sum((w[i][j] + w[j][i]) * z[j][kk] for j in range(n)) / (2 * k) for kk in range(c)]
                top_a = max(a)
                u = [y[i][kk] ** lam * math.exp(a[kk] - top_a) for kk in range(c)]
                new.append([x / sum(u) for x in u])
            z = new
        if step == iterations:
            break
        mu = [normalise([sum(z[i][kk] * f[i][t] for i in range(n)) / sum(z[i][kk] for i in range(n)) for t in range(d)])
              for kk in range(c)]
        var = [sum(z[i][kk] * (f[i][t] - mu[kk][t]) ** 2 for i in range(n) for kk in range(c)) /
               sum(z[i][kk] for i in range(n) for kk in range(c)) for t in range(d)]
    return torch.tensor(z, dtype=torch.float64)


def test_transclip_is_the_papers_block_updates_written_out(linear_head):
    queries = query_feats(12, seed=3)
    from vlmcls.adapters.transclip import transclip_assignments

    logits = 100.0 * queries @ TEXT.T
    want = reference_transclip(queries, logits)
    got = transclip_assignments(queries, logits).z
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # through the pipeline: the probabilities are z (float32 features in, as a run has)
    out = run_spec(parse_spec("lin+transclip"), context(MethodOptions()), queries.float())
    want32 = reference_transclip(queries.float().double(), 100.0 * queries.float().double() @ TEXT.T)
    torch.testing.assert_close(out.probs.double(), want32, atol=1e-6, rtol=0)
    assert out.info["transclip_moved"] == int((want32.argmax(1) != logits.argmax(1)).sum())


def test_transclip_probabilities_are_z_under_a_sigmoid_score_rule_too(linear_head):
    queries = query_feats(9, seed=4).float()
    soft = run_spec(parse_spec("lin+transclip"), context(MethodOptions()), queries)
    sig = run_spec(parse_spec("lin+transclip"), context(MethodOptions(), score_rule="sigmoid"), queries)
    torch.testing.assert_close(sig.probs, soft.probs, atol=1e-6, rtol=0)


def test_transclip_on_one_image_leaves_scores_and_on_one_class_or_equal_images_stays_finite(linear_head):
    one = query_feats(1).float()
    plain = run_spec(parse_spec("lin"), context(MethodOptions()), one)
    out = run_spec(parse_spec("lin+transclip"), context(MethodOptions()), one)
    torch.testing.assert_close(out.probs.double(), plain.probs.double())
    assert any("needs two or more" in w.get("warning", "") for w in out.warnings)
    cats = torch.nn.functional.normalize(TEXT[0] + 0.05 * torch.randn(10, 4, generator=torch.Generator().manual_seed(1),
                                                                        dtype=torch.float64), dim=1).float()
    out = run_spec(parse_spec("lin+transclip"), context(MethodOptions()), cats)
    assert torch.isfinite(out.probs).all() and out.probs.argmax(1).tolist() == [0] * 10
    same = TEXT[1:2].repeat(6, 1).float()
    out = run_spec(parse_spec("lin+transclip"), context(MethodOptions()), same)
    assert torch.isfinite(out.probs).all() and out.probs.argmax(1).tolist() == [1] * 6
    anchored = run_spec(parse_spec("lin+transclip"), context(MethodOptions(methods={"transclip": {"anchor": 1.0}})),
                        cats)
    assert torch.isfinite(anchored.probs).all()


def test_transclip_refuses_images_that_are_not_the_runs(linear_head):
    from vlmcls.methods.pipeline import Pipeline

    queries = query_feats(6).float()
    from vlmcls.methods import build_pipeline
    from vlmcls.methods.pipeline import gather_in_process

    pipeline, _ = build_pipeline("lin+transclip", context(MethodOptions()), gather_in_process(queries))
    assert isinstance(pipeline, Pipeline)
    with pytest.raises(ConfigError, match="scores the run's own images only"):
        pipeline.apply(queries)


# -- TDA -------------------------------------------------------------------------------------------------------


def reference_tda(feats: torch.Tensor, logits: torch.Tensor, pos=(3, 2.0, 5.0), neg=(2, 0.117, 1.0),
                  entropy=(0.2, 0.5), mask=(0.03, 1.0)) -> torch.Tensor:
    """kdiAAA/TDA tda_runner.py's loop on one view per image, written out with dicts of lists."""
    classes = logits.shape[1]
    pos_cache: dict[int, list] = {}
    neg_cache: dict[int, list] = {}

    def update(cache, pred, item, capacity):
        if pred in cache:
            if len(cache[pred]) < capacity:
                cache[pred].append(item)
            elif item[1] < cache[pred][-1][1]:
                cache[pred][-1] = item
            cache[pred] = sorted(cache[pred], key=lambda it: it[1])
        else:
            cache[pred] = [item]

    def cache_logits(f, cache, alpha, beta, negative):
        total = torch.zeros(classes, dtype=torch.float64)
        for c in sorted(cache):
            for item in cache[c]:
                value = ((item[2] > mask[0]) & (item[2] < mask[1])).double() if negative else \
                    torch.nn.functional.one_hot(torch.tensor(c), classes).double()
                total += math.exp(-(beta - beta * float(f @ item[0]))) * value
        return alpha * total

    out = []
    for f, l in zip(feats, logits):
        probs = torch.softmax(l, 0)
        loss = float(-(probs * torch.log_softmax(l, 0)).sum())
        h = loss / math.log2(classes)
        pred = int(l.argmax())
        update(pos_cache, pred, [f, loss], pos[0])
        if entropy[0] < h < entropy[1]:
            update(neg_cache, pred, [f, loss, probs], neg[0])
        final = l.clone()
        if pos_cache:
            final += cache_logits(f, pos_cache, pos[1], pos[2], False)
        if neg_cache:
            final -= cache_logits(f, neg_cache, neg[1], neg[2], True)
        out.append(final)
    return torch.stack(out)


@pytest.mark.parametrize("scale", [100.0, 8.0])  # 8: soft predictions, so the negative cache fills too
def test_tda_is_the_reference_stream_written_out(linear_head, monkeypatch, scale):
    monkeypatch.setitem(METHODS, "lin", scripted_head("lin", lambda feats, names: scale * feats.double() @ TEXT.T))
    queries = query_feats(40, seed=5).float()
    logits = scale * queries.double() @ TEXT.T
    want = reference_tda(queries.double(), logits)
    out = run_spec(parse_spec("lin+tda"), context(MethodOptions()), queries)
    torch.testing.assert_close(out.logits.double(), want, atol=1e-4, rtol=1e-6)  # float32 out
    from vlmcls.adapters.tda import replay_stream, tda_logits

    stream = replay_stream(queries.double(), logits)
    exact = tda_logits(queries.double(), logits, torch.arange(40), stream)[0]
    torch.testing.assert_close(exact, want, atol=1e-6, rtol=0)
    # any batching of the run's images gives the same rows: the stream is replayed once, by position
    halves = torch.cat([tda_logits(queries[rows].double(), logits[rows], torch.arange(40)[rows], stream)[0]
                        for rows in (slice(20, 40), slice(0, 20))])
    torch.testing.assert_close(halves, torch.cat([want[20:], want[:20]]), atol=1e-6, rtol=0)
    if scale == 8.0:
        assert stream.negative.images.numel() > 0


def test_tda_on_equal_images_answers_one_class_without_error(linear_head):
    same = TEXT[2:3].repeat(7, 1).float()
    out = run_spec(parse_spec("lin+tda"), context(MethodOptions()), same)
    assert out.probs.argmax(1).tolist() == [2] * 7 and torch.isfinite(out.logits).all()
    assert out.info["tda_positive_items"] == 3  # the first three fill the cache; equal losses never replace
    with pytest.raises(ConfigError, match=r"tda\.entropy_lower \(0\.6\) must be below tda\.entropy_upper"):
        run_spec(parse_spec("lin+tda"), context(MethodOptions(methods={"tda": {"entropy_lower": 0.6}})), same)


# -- order, options, ECE ---------------------------------------------------------------------------------------


def test_the_refiners_run_in_a_fixed_order_and_list_their_options():
    assert parse_spec("cbd+frechet+transclip+tda+tfup+gda+tip").stages == ("tip", "gda", "tfup", "tda", "transclip",
                                                                          "frechet")
    assert parse_spec("templates").with_implied(MethodOptions(methods={"gda": {"support": Path("s")}})).stages == ("gda",)
    from typer.testing import CliRunner

    from vlmcls.cli import app

    shown = CliRunner().invoke(app, ["methods", "gda"], terminal_width=200).output
    assert "gda.support" in shown or "support" in shown


def test_expected_calibration_error_with_15_equal_bins():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 1])
    # bins: 0.9 -> (0.8667, 0.9333], 0.8 -> (0.7333, 0.8], 0.7 -> (0.6667, 0.7333], 0.55 -> (0.5333, 0.6]
    want = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(1 - 0.55)) / 4
    assert expected_calibration_error(probs, labels) == pytest.approx(want)
    assert expected_calibration_error(torch.tensor([[1.0, 0.0]] * 3), torch.tensor([0, 0, 0])) == pytest.approx(0.0)
