"""The descriptor audit: which CbD descriptors help, which are neutral, which hurt, measured on labelled images.

Under CbD's rule a class scores ``S[n, c] = mean_j f_n · t_cj``, so leaving one descriptor j of class c out only
changes column c, to ``(sum_c[n] − f_n · t_j) / (M_c − 1)`` (the bare class name when j was the last one). Every
left-out descriptor is therefore scored in closed form from one similarity matrix ``sims [N, T]`` and the best
*other* class of each image (the top two of S): no re-encoding and no per-descriptor pass over the model.

For every descriptor the audit reports, when it is left out:

- ``delta_top1``: the change in top-1 accuracy over the audited images (negative: the descriptor helps);
- ``delta_recall``: the change in its own class's recall (negative: it helps that class);
- ``separation``: how often it is more similar to an image of its class than to an image of the class its class
  is most confused with (its *rival*), over all such pairs, ties counting half; 0.5 separates nothing;
- ``delta_expected``: the change in expected accuracy (the mean probability of the true class, softmax at the
  model's logit scale) when it is left out; positive: leaving it out helps, so the descriptor hurts;
- ``neutral_within``: the margin that change must pass to count, the larger of 0.01 points and twice its
  standard error over the images;
- ``verdict``: ``hurts`` when ``delta_expected >= neutral_within``, ``helps`` when ``delta_expected <=
  -neutral_within``, else ``neutral``; so its sign is always the sign of ``delta_expected``. The counted deltas
  above move in steps of one image and swing with every near-tie (two classes confused by design flip back and
  forth), so they are reported as counted but do not decide; the expected accuracy moves with every image.

Pruning drops the ``hurts`` descriptors (and, when asked, the ``neutral`` ones). Pruning and reporting on the same
images is optimistic; ``holdout`` keeps a share of each class's images aside, audits the rest, and reports the
top-1 and expected accuracy before and after pruning on the held-out images only
(:attr:`AuditResult.pruning_lowers_top1` flags a pruned file that does worse there).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from ..llm.descriptors import DescriptorSet
from ..errors import ConfigError
from ..templates import wordify

if TYPE_CHECKING:
    from ..api import Classifier

__all__ = ["VERDICTS", "DescriptorVerdict", "AuditResult", "audit_descriptors", "audit_features"]

log = logging.getLogger(__name__)

VERDICTS = ("hurts", "neutral", "helps")  # worst first
# Leaving a descriptor out that moves the expected accuracy by less than this is neutral however consistent the
# move: 1e-4 is 0.01 percentage points, too small to matter.
SOFT_TOLERANCE = 1e-4
SIGNIFICANCE = 2.0  # and so is a move smaller than this many standard errors of the per-image changes
_CHUNK_ELEMENTS = 2**24  # the per-descriptor work runs in [N, block] float64 pieces of ~128 MB at most


@dataclass
class DescriptorVerdict:
    """The audit of one descriptor of one class."""

    class_name: str
    descriptor: str
    delta_recall: float | None  # change in its class's recall when left out; None when the class has no images
    delta_top1: float  # change in top-1 accuracy when left out
    separation: float | None  # P(sim to own image > sim to rival image); None without a rival with images
    verdict: str  # helps | neutral | hurts
    rival: str | None = None  # the class its class is most confused with
    delta_expected: float = 0.0  # change in the mean probability of the true class when left out: decides
    neutral_within: float = SOFT_TOLERANCE  # |delta_expected| below this is neutral (0.01 points or 2 std errors)

    def to_dict(self) -> dict[str, Any]:
        """The row of ``audit.json``."""
        return {"descriptor": self.descriptor, "delta_expected": _round(self.delta_expected),
                "neutral_within": _round(self.neutral_within), "delta_recall": _round(self.delta_recall),
                "delta_top1": _round(self.delta_top1), "separation": _round(self.separation),
                "verdict": self.verdict}

    def shown_expected(self) -> tuple[str, str]:
        """``delta_expected`` and ``neutral_within`` in points as printed: digits enough that a neutral row never
        shows |Δ| equal to its margin (a verdict's |Δ| is at least its margin, and rounding keeps that order)."""
        for digits in (2, 3, 4) if self.verdict == "neutral" else (2,):
            delta, margin = f"{100 * self.delta_expected:+.{digits}f}", f"{100 * self.neutral_within:.{digits}f}"
            if delta.lstrip("+-") != margin:
                break
        return delta, margin

    def sort_key(self) -> tuple:
        """Worst first: hurts before neutral before helps, then the largest gain from leaving it out."""
        return (VERDICTS.index(self.verdict), -self.delta_expected, -self.delta_top1, -(self.delta_recall or 0.0))


@dataclass
class AuditResult:
    """Every descriptor's verdict, the pruned descriptors, and the accuracy before and after pruning."""

    entries: dict[str, list[DescriptorVerdict]]  # class -> its descriptors, worst first
    class_names: list[str]
    pruned: DescriptorSet  # the descriptors kept, in the format --descriptors reads
    dropped: tuple[str, ...]  # the verdicts pruned: ("hurts",) or ("hurts", "neutral")
    audited_images: int
    report_images: int  # the images the before/after accuracy is measured on
    holdout: float | None  # share of each class's images held out for the before/after accuracy
    accuracy_before: float
    accuracy_after: float
    warnings: list[dict] = field(default_factory=list)  # classes the descriptor file did not cover
    image_errors: list[dict] = field(default_factory=list)  # {"id", "error"} of images that could not be read
    report_ids: list[str] = field(default_factory=list)  # ids of the images the before/after accuracy is measured on
    expected_before: float | None = None  # mean probability of the true class on the report images, all descriptors
    expected_after: float | None = None  # … and with the pruned descriptors

    @property
    def optimistic(self) -> bool:
        """True when the before/after accuracy is measured on the images the pruning was decided on."""
        return self.holdout is None

    @property
    def pruning_lowers_top1(self) -> bool:
        """True when the pruned descriptors classify the report images worse than the full file does."""
        return self.accuracy_after < self.accuracy_before

    @property
    def counts(self) -> dict[str, int]:
        found = Counter(v.verdict for rows in self.entries.values() for v in rows)
        return {verdict: found.get(verdict, 0) for verdict in VERDICTS}

    def worst(self, limit: int | None = None) -> list[DescriptorVerdict]:
        rows = sorted((v for vs in self.entries.values() for v in vs), key=DescriptorVerdict.sort_key)
        return rows[:limit] if limit is not None else rows

    def to_dict(self) -> dict[str, list[dict[str, Any]]]:
        """``{class: [{"descriptor", "delta_expected", "neutral_within", "delta_recall", "delta_top1",
        "separation", "verdict"}, …]}``, worst first."""
        return {name: [v.to_dict() for v in self.entries.get(name, [])] for name in self.class_names}

    def summary(self) -> dict[str, Any]:
        """The facts around the table: images, accuracy before/after, what was pruned, the optimism flag."""
        return {"audited_images": self.audited_images, "report_images": self.report_images,
                "holdout": self.holdout, "accuracy_before": self.accuracy_before,
                "accuracy_after": self.accuracy_after, "expected_before": self.expected_before,
                "expected_after": self.expected_after, "pruning_lowers_top1": self.pruning_lowers_top1,
                "dropped": list(self.dropped), "verdicts": self.counts, "optimistic": self.optimistic}


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


# -- the Python API ---------------------------------------------------------------------------------------
def audit_descriptors(
    classifier: "Classifier",
    data: Any,
    classes: str | Path | Sequence[str],
    descriptors: DescriptorSet | str | Path,
    *,
    holdout: float | None = None,
    prune_neutral: bool = False,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    **source_options: Any,
) -> AuditResult:
    """Audit the descriptors of ``classes`` on the labelled images of ``data`` (class sub-folders or a dataset).

    Images and descriptor texts are encoded once through the classifier's store; everything after is matrix
    work on those features. ``holdout`` (e.g. 0.5) keeps that share of each class's images out of the audit and
    measures the accuracy before and after pruning on them.
    """
    from ..api import as_records, load_classes
    from ..sources.shards import listing_error  # a missing shard is an error row without a label

    class_names = load_classes(classes)
    dset = descriptors if isinstance(descriptors, DescriptorSet) else DescriptorSet.from_json(descriptors)
    _check_holdout(holdout)
    records = as_records(data, **source_options)
    unknown = Counter(r.label for r in records if r.label is not None and r.label not in class_names)
    if unknown:
        shown = ", ".join(f"'{label}' ({count})" for label, count in unknown.most_common(10))
        raise ConfigError(f"labels not among the {len(class_names)} classes: {shown}. The audit needs every "
                          "labelled image to belong to one of --classes; add them or fix their spelling.")
    labelled = [r for r in records if r.label is not None]
    broken = [(r, reason) for r in records if r.label is None and (reason := listing_error(r)) is not None]
    if not labelled:
        raise ConfigError(f"no labelled images in '{data}': put the images in one sub-folder per class, or name "
                          "the dataset's label column with --dataset label_column=NAME.")
    from ..engines import LocalEngine, RunRequest

    feats = LocalEngine(classifier).encode(RunRequest(labelled, class_names), progress)  # as eval and classify
    if feats.errors:
        log.warning("%d images could not be read and are left out of the audit", len(feats.errors))
    if not feats.records:
        raise ConfigError(f"none of the {len(labelled)} labelled images in '{data}' could be read; nothing to audit.")
    index = {name: c for c, name in enumerate(class_names)}
    labels = torch.tensor([index[r.label] for r in feats.records], dtype=torch.long)  # [N]
    result = audit_features(feats.feats, labels, class_names, dset, classifier.encoder.encode_texts,
                            logit_scale=classifier.model.logit_scale, holdout=holdout, prune_neutral=prune_neutral,
                            seed=seed, image_ids=[r.id for r in feats.records])
    result.image_errors = [{"id": rec.id, "error": reason} for rec, reason in broken + list(feats.errors)]
    return result


def audit_features(
    image_feats: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    descriptors: DescriptorSet,
    encode_texts: Callable[[list[str]], torch.Tensor],
    *,
    logit_scale: float = 100.0,
    holdout: float | None = None,
    prune_neutral: bool = False,
    seed: int = 0,
    image_ids: Sequence[str] | None = None,
) -> AuditResult:
    """The audit on stored features: ``image_feats [N, D]`` (unit rows), ``labels [N]`` (class indices)."""
    class_names = list(class_names)
    _check_holdout(holdout)
    if image_feats.shape[0] != labels.shape[0] or image_feats.shape[0] == 0:
        raise ConfigError(f"{image_feats.shape[0]} image features for {labels.shape[0]} labels; give one label "
                          "per image, and at least one image.")
    selected, rows = descriptors.for_classes(class_names)
    # A class without descriptors (or with its own name as the only one) is scored by its name: nothing to audit.
    audited = {c: ([] if not selected[c] or selected[c] == [c] else list(selected[c])) for c in class_names}
    texts = [s for c in class_names for s in (selected.sentences(c) if audited[c] else [])]
    owner = torch.tensor([i for i, c in enumerate(class_names) for _ in (audited[c] or [])], dtype=torch.long)  # [T]
    text_feats = encode_texts(texts + [wordify(c) for c in class_names]).to(torch.float32)  # [T + C, D]
    feats = image_feats.to(torch.float32)
    # The one large matrix, kept in float32 (as the model scores); the per-descriptor work is float64, in blocks.
    sims = feats @ text_feats[: len(texts)].T  # [N, T]
    name_sims = (feats @ text_feats[len(texts):].T).to(torch.float64)  # [N, C], a class left with no descriptor

    audit_rows, report_rows = _split(labels, holdout, seed, image_ids)
    verdicts = _leave_one_out(sims[audit_rows], name_sims[audit_rows], owner, labels[audit_rows], class_names,
                              audited, logit_scale)
    dropped = ("hurts", "neutral") if prune_neutral else ("hurts",)
    keep = torch.tensor([v.verdict not in dropped for c in class_names for v in verdicts.get(c, [])], dtype=torch.bool)
    pruned_names = {c: [v.descriptor for v in verdicts.get(c, []) if v.verdict in dropped] for c in class_names}
    before = _accuracy(sims[report_rows], name_sims[report_rows], owner, torch.ones_like(keep), labels[report_rows])
    after = _accuracy(sims[report_rows], name_sims[report_rows], owner, keep, labels[report_rows])
    expected_before, expected_after = (
        _expected_accuracy(sims[report_rows], name_sims[report_rows], owner, kept, labels[report_rows], logit_scale)
        for kept in (torch.ones_like(keep), keep))
    for rows_of_class in verdicts.values():
        rows_of_class.sort(key=DescriptorVerdict.sort_key)
    in_file = [c for c in class_names if c in descriptors]
    pruned = DescriptorSet({c: [d for d in descriptors[c] if d not in pruned_names.get(c, [])] for c in in_file})
    log.info("audited %d descriptors of %d classes on %d images: %s", len(texts), len(class_names),
             int(audit_rows.numel()), dict(Counter(v.verdict for vs in verdicts.values() for v in vs)))
    return AuditResult(
        entries={c: verdicts.get(c, []) for c in class_names}, class_names=class_names, pruned=pruned,
        dropped=dropped, audited_images=int(audit_rows.numel()), report_images=int(report_rows.numel()),
        holdout=holdout, accuracy_before=before, accuracy_after=after, warnings=[r.to_dict() for r in rows],
        report_ids=[image_ids[i] for i in report_rows.tolist()] if image_ids is not None else [],
        expected_before=expected_before, expected_after=expected_after,
    )


def _check_holdout(holdout: float | None) -> None:
    if holdout is not None and not 0.0 < holdout < 1.0:
        raise ConfigError(f"holdout '{holdout}' must lie strictly between 0 and 1, e.g. 0.5 (audit on one half, "
                          "report on the other), or be left out.")


def _split(labels: torch.Tensor, holdout: float | None, seed: int,
           image_ids: Sequence[str] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(audit rows, report rows): all and all without a holdout; else a seeded split inside every class.

    The split depends on the image ids (not on the order images were listed), so a re-run splits the same way.
    """
    everything = torch.arange(labels.shape[0])
    if holdout is None:
        return everything, everything
    ids = list(image_ids) if image_ids is not None else [str(i) for i in range(labels.shape[0])]
    by_class: dict[int, list[int]] = {}
    for n, c in enumerate(labels.tolist()):
        by_class.setdefault(c, []).append(n)
    audit_rows, report_rows = [], []
    for c in sorted(by_class):
        members = sorted(by_class[c], key=lambda n: ids[n])
        random.Random(f"{seed}:{c}").shuffle(members)
        held = round(len(members) * holdout)
        held = min(max(held, 1 if len(members) > 1 else 0), len(members) - 1)  # both halves get one if they can
        report_rows += members[:held]
        audit_rows += members[held:]
    if not report_rows:
        raise ConfigError("holdout left no image to report on: every class has a single image. Audit without "
                          "--holdout, or add images.")
    return torch.tensor(sorted(audit_rows)), torch.tensor(sorted(report_rows))


def _class_sums(sims: torch.Tensor, owner: torch.Tensor, keep: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and class, the sum of the kept descriptors' similarities [N, C], and their counts [C] (float64)."""
    membership = torch.zeros(owner.shape[0], num_classes, dtype=sims.dtype)  # [T, C]
    membership[torch.arange(owner.shape[0]), owner] = keep.to(sims.dtype)
    return (sims @ membership).to(torch.float64), membership.sum(0).to(torch.float64)


def _class_scores(sims: torch.Tensor, name_sims: torch.Tensor, owner: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """CbD scores [N, C] from the kept descriptors' similarities; a class with none kept scores its name."""
    sums, counts = _class_sums(sims, owner, keep, name_sims.shape[1])
    return torch.where(counts > 0, sums / counts.clamp_min(1), name_sims)


def _accuracy(sims, name_sims, owner, keep, labels) -> float:
    if labels.numel() == 0:
        return 0.0
    return float((_class_scores(sims, name_sims, owner, keep).argmax(1) == labels).to(torch.float64).mean())


def _expected_accuracy(sims, name_sims, owner, keep, labels, logit_scale) -> float:
    """The mean probability of the true class (softmax at the model's scale): what the verdicts are based on."""
    if labels.numel() == 0:
        return 0.0
    probs = torch.softmax(logit_scale * _class_scores(sims, name_sims, owner, keep), dim=1)  # [N, C]
    return float(probs.gather(1, labels[:, None]).mean())


def _leave_one_out(sims, name_sims, owner, labels, class_names, audited, logit_scale) -> dict[str, list[DescriptorVerdict]]:
    """Every descriptor's verdict, in closed form: only its own class's column changes when it is left out."""
    n_images, num_classes = name_sims.shape
    keep_all = torch.ones(owner.shape[0], dtype=torch.bool)
    sums, counts = _class_sums(sims, owner, keep_all, num_classes)  # [N, C], [C]
    scores = torch.where(counts > 0, sums / counts.clamp_min(1), name_sims)  # [N, C]
    predicted = scores.argmax(1)  # [N]
    correct = predicted == labels  # [N]
    top1 = correct.to(torch.float64).mean()
    support = torch.bincount(labels, minlength=num_classes)  # [C]
    recall = torch.bincount(labels[correct], minlength=num_classes).to(torch.float64) / support.clamp_min(1)
    # The best other class of every (image, class): the top score unless that is the class itself.
    top2_values, top2_index = scores.topk(min(2, num_classes), dim=1)  # [N, 2]
    second_value = top2_values[:, -1:] if num_classes > 1 else torch.full_like(top2_values, -torch.inf)
    second_index = top2_index[:, -1:]
    columns = torch.arange(num_classes)[None, :]  # [1, C]
    is_top = top2_index[:, :1] == columns  # [N, C]
    other_value = torch.where(is_top, second_value, top2_values[:, :1])  # [N, C]
    other_index = torch.where(is_top, second_index, top2_index[:, :1])  # [N, C]
    # Expected accuracy: softmax at the model's scale. With the log-sum-exp of every row *without* each column,
    # a changed column is an O(1) update. Subtracting a column's share from the total cancels catastrophically
    # when that column holds nearly all of it, which only the row's top column can (it has p >= 1/2 or no
    # column has): that one is recomputed with the column masked out.
    logits = logit_scale * scores  # [N, C]
    log_z = torch.logsumexp(logits, dim=1, keepdim=True)  # [N, 1]
    true_logit = logits.gather(1, labels[:, None])  # [N, 1]
    without_top = logits.masked_fill(is_top, -torch.inf).logsumexp(dim=1, keepdim=True)  # [N, 1]
    shares = torch.exp(logits - log_z).clamp(max=0.5)  # [N, C]; p <= 1/2 off the top column, where it is used
    log_z_without = torch.where(is_top, without_top, log_z + torch.log1p(-shares))  # [N, C]
    rivals = _rivals(predicted, labels, scores, num_classes)

    owner_list = owner.tolist()
    delta_top1 = torch.empty(len(owner_list), dtype=torch.float64)
    delta_recall = torch.empty(len(owner_list), dtype=torch.float64)
    delta_expected = torch.empty(len(owner_list), dtype=torch.float64)
    expected_error = torch.zeros(len(owner_list), dtype=torch.float64)  # standard error of delta_expected
    chunk = max(1, _CHUNK_ELEMENTS // max(1, n_images))
    for start in range(0, len(owner_list), chunk):
        cols = torch.arange(start, min(start + chunk, len(owner_list)))  # descriptors in this block
        cls = owner[cols]  # [B]
        remaining = (counts[cls] - 1)[None, :]  # [1, B]
        left_out = torch.where(remaining > 0, (sums[:, cls] - sims[:, cols].to(torch.float64)) / remaining.clamp_min(1),
                               name_sims[:, cls])  # [N, B] the class's new score
        rival_value, rival_index = other_value[:, cls], other_index[:, cls]  # [N, B]
        wins = (left_out > rival_value) | ((left_out == rival_value) & (cls[None, :] < rival_index))
        new_pred = torch.where(wins, cls[None, :], rival_index)  # [N, B]
        new_correct = new_pred == labels[:, None]  # [N, B]
        delta_top1[cols] = new_correct.to(torch.float64).mean(0) - top1
        own = labels[:, None] == cls[None, :]  # [N, B]
        own_hits = (new_correct & own).sum(0).to(torch.float64)
        delta_recall[cols] = own_hits / support[cls].clamp_min(1) - recall[cls]
        new_logit = logit_scale * left_out  # [N, B]
        new_log_z = torch.logaddexp(log_z_without[:, cls], new_logit)  # [N, B]
        new_true = torch.where(own, new_logit, true_logit)  # [N, B]
        changes = torch.exp(new_true - new_log_z) - torch.exp(true_logit - log_z)  # [N, B] per image
        delta_expected[cols] = changes.mean(0)
        if n_images > 1:
            expected_error[cols] = changes.std(0) / n_images**0.5

    verdicts: dict[str, list[DescriptorVerdict]] = {c: [] for c in class_names}
    flat = [(c, d) for c in class_names for d in audited[c]]
    for j, (c, descriptor) in enumerate(flat):
        ci = owner_list[j]
        rival = rivals[ci]
        margin = _margin(float(expected_error[j]))
        verdicts[c].append(DescriptorVerdict(
            class_name=c, descriptor=descriptor,
            delta_recall=float(delta_recall[j]) if support[ci] > 0 else None,
            delta_top1=float(delta_top1[j]),
            separation=_separation(sims[:, j], labels, ci, rival),
            verdict=_verdict(float(delta_expected[j]), margin),
            rival=class_names[rival] if rival is not None else None,
            delta_expected=float(delta_expected[j]), neutral_within=margin,
        ))
    return verdicts


def _margin(standard_error: float) -> float:
    """How far the expected accuracy must move for a verdict: 0.01 points, or two standard errors if more."""
    return max(SOFT_TOLERANCE, SIGNIFICANCE * standard_error)


def _verdict(delta_expected: float, margin: float) -> str:
    """Leaving out a helpful descriptor costs expected accuracy: a negative delta means it helps."""
    if abs(delta_expected) < margin:
        return "neutral"
    return "helps" if delta_expected < 0 else "hurts"


def _rivals(predicted: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor, num_classes: int) -> list[int | None]:
    """The class each class is most confused with (both directions), else the runner-up by mean score."""
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    both = (confusion + confusion.T).fill_diagonal_(-1)  # [C, C]
    rivals: list[int | None] = []
    for c in range(num_classes):
        if num_classes < 2:
            rivals.append(None)
            continue
        if both[c].max() > 0:
            rivals.append(int(both[c].argmax()))
            continue
        own = labels == c
        mean_scores = scores[own].mean(0) if own.any() else scores.mean(0)  # [C]
        mean_scores[c] = -torch.inf
        rivals.append(int(mean_scores.argmax()))
    return rivals


def _separation(descriptor_sims: torch.Tensor, labels: torch.Tensor, c: int, rival: int | None) -> float | None:
    """P(sim to an image of class c > sim to an image of its rival), ties counting half (an AUC)."""
    if rival is None:
        return None
    own, other = descriptor_sims[labels == c], descriptor_sims[labels == rival]
    if own.numel() == 0 or other.numel() == 0:
        return None
    # Sorted counts instead of an [own, other] comparison matrix: O(n log n) for classes with many images.
    other_sorted = other.sort().values
    below = torch.searchsorted(other_sorted, own, right=False)  # rival images strictly less similar
    up_to = torch.searchsorted(other_sorted, own, right=True)
    pairs = own.numel() * other.numel()
    return float((below.sum() + 0.5 * (up_to - below).sum()) / pairs)
