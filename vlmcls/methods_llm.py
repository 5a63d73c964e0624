"""The methods whose text comes from an LLM or stands in for one: cbd, waffle, cupl and fudd.

``cbd`` scores with Classification-by-Description sentences and the mean of similarities; ``waffle`` does the same
with WaffleCLIP's random descriptors (the baseline an LLM must beat); ``cupl`` averages the embeddings of
LLM-written sentences (CuPL, see :mod:`vlmcls.cupl`); ``fudd`` re-ranks each image's ambiguous set
with differential descriptions of the pairs inside it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from .descriptors import DescriptorSet, generate_descriptors, generate_pair_descriptions
from .differential import ambiguous_sets, build_pair_table, explain_moves, fudd_template, fudd_text, most_frequent_pairs, rerank
from .errors import ConfigError
from .methods import METHODS, MethodOptions, MethodOutput, _score_sentences, register_method
from .prompting import load_prompt
from .scoring import probabilities

__all__ = ["resolve_descriptors", "load_pair_file"]

log = logging.getLogger(__name__)


def _usage_into(out: MethodOutput, usage: Any) -> None:
    out.llm_calls += usage.calls
    out.llm_tokens += usage.total_tokens
    out.info["llm_cached_answers"] = out.info.get("llm_cached_answers", 0) + usage.cached
    out.info["llm_failed"] = out.info.get("llm_failed", 0) + usage.failed


def resolve_descriptors(class_names: list[str], options: MethodOptions) -> tuple[DescriptorSet, list[dict], Any]:
    """Descriptors from options.descriptors (a DescriptorSet or a CbD JSON file), else from the LLM."""
    if options.descriptors is not None:
        source = options.descriptors
        dset = source if isinstance(source, DescriptorSet) else DescriptorSet.from_json(source)
        selected, rows = dset.for_classes(class_names)
        return selected, [r.to_dict() for r in rows], None
    if options.llm is None:
        raise ConfigError("method 'cbd' needs descriptors: --descriptors FILE, or an LLM with --llm-model (and --base-url).")
    prompt = load_prompt("descriptors", options.prompts_dir, options.extra.get("descriptor_prompt_file"))
    dset, rows, usage = generate_descriptors(class_names, options.llm, prompt, options.domain_hint)
    return dset, [r.to_dict() for r in rows], usage


def _explain_descriptors(image_feats, out: MethodOutput, sentences: dict[str, list[str]], descriptors: dict[str, list[str]], limit: int = 3):
    """Per image: the descriptors that contributed most to its top prediction and to the runner-up."""
    names = list(sentences)
    sims = image_feats @ out.text_feats.T  # [N, T], sentences in class order (as scored)
    starts, pos = {}, 0
    for c in names:
        starts[c] = pos
        pos += len(sentences[c])
    top2 = torch.topk(out.probs, min(2, len(names)), dim=1).indices
    explanations = []
    for n in range(image_feats.shape[0]):
        entry = {}
        for role, c_idx in zip(("top", "runner_up"), top2[n].tolist()):
            c = names[c_idx]
            row = sims[n, starts[c] : starts[c] + len(sentences[c])]
            order = torch.argsort(row, descending=True)[:limit].tolist()
            labels = descriptors.get(c) or [c]
            entry[role] = {"class": c, "descriptors": [{"descriptor": labels[j] if j < len(labels) else sentences[c][j],
                                                       "similarity": round(float(row[j]), 4)} for j in order]}
        explanations.append({"descriptors": entry})
    return explanations


def _score_descriptor_set(clf, image_feats, class_names, options, dset: DescriptorSet) -> MethodOutput:
    sentences = {c: dset.sentences(c) for c in class_names}
    out = _score_sentences(clf, image_feats, sentences, options.aggregation or "mean_similarity")
    if options.explain:
        out.explanations = _explain_descriptors(image_feats, out, sentences, dset.to_dict())
    out.artifacts["descriptors"] = dset.to_dict()
    return out


@register_method("cbd")
def _cbd(clf, image_feats, class_names, options):
    dset, rows, usage = resolve_descriptors(class_names, options)
    out = _score_descriptor_set(clf, image_feats, class_names, options, dset)
    out.warnings.extend(rows)
    if usage is not None:
        _usage_into(out, usage)
    return out


@register_method("waffle")
def _waffle(clf, image_feats, class_names, options):
    n_pairs = int(options.extra.get("waffle_pairs", 15))
    return _score_descriptor_set(clf, image_feats, class_names, options, DescriptorSet.waffle(class_names, n_pairs, options.seed))


@register_method("cupl")
def _cupl(clf, image_feats, class_names, options):
    from .cupl import cupl_sentences

    sentences, rows, usage = cupl_sentences(class_names, options)
    if options.extra.get("cupl_with_templates"):  # the paper's hybrid: LLM sentences and templates in one mean
        from .templates import apply_templates, load_templates

        templates = load_templates(options.templates if isinstance(options.templates, str) else "imagenet80")
        sentences = {c: [*found, *apply_templates(templates, c)] for c, found in sentences.items()}
    out = _score_sentences(clf, image_feats, sentences, options.aggregation or "mean_embedding")
    out.warnings.extend(r.to_dict() for r in rows)
    if usage is not None:
        _usage_into(out, usage)
    out.artifacts["cupl_sentences"] = sentences
    return out


def load_pair_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """A FuDD pair JSON: {"a_b": {"classes": [a, b], "prompt_pairs": [{"attr_type", "prompt_pair": [ta, tb]}]}}.

    ``a`` and ``b`` are class names or, as in FuDD's released files, integer indices into the class list.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read pair file '{path}': {exc}") from exc
    expected = "expected {'a_b': {'classes': [a, b], 'prompt_pairs': [{'attr_type': ..., 'prompt_pair': [text_a, text_b]}]}}"
    if not isinstance(data, dict):
        raise ConfigError(f"pair file '{path}' is not FuDD pair JSON: {expected}.")
    for key, entry in data.items():
        ok = isinstance(entry, dict) and isinstance(entry.get("classes"), list) and len(entry["classes"]) == 2
        pairs = entry.get("prompt_pairs", []) if ok else None
        ok = ok and isinstance(pairs, list) and all(
            isinstance(p, dict) and isinstance(p.get("prompt_pair"), list) and len(p["prompt_pair"]) == 2
            and all(isinstance(t, str) for t in p["prompt_pair"]) for p in pairs)
        if not ok:
            raise ConfigError(f"pair file '{path}': entry '{key}' is not a FuDD pair; {expected}.")
    return data


def _ask_pairs(pairs, options: MethodOptions, out: MethodOutput) -> dict[str, dict[str, Any]]:
    """Differential descriptions for pairs from the LLM, most frequent first, within the token budget."""
    prompt = load_prompt("differential", options.prompts_dir, options.extra.get("differential_prompt_file"))
    budget = options.extra.get("token_budget")
    chunk = len(pairs) if budget is None else max(1, int(options.extra.get("budget_chunk", 8)))
    answered: dict[str, dict[str, Any]] = {}
    asked = 0
    for start in range(0, len(pairs), chunk):
        if budget is not None and out.llm_tokens >= budget:
            out.warnings.append({"item": f"{len(pairs) - asked} pairs", "stage": "differential", "severity": "warning",
                                 "message": f"token budget {budget} spent; remaining pairs keep their first scores"})
            break
        part = pairs[start : start + chunk]
        result, rows, usage = generate_pair_descriptions(part, options.llm, prompt, options.domain_hint)
        asked += len(part)
        answered.update(result)
        out.warnings.extend(r.to_dict() for r in rows)
        _usage_into(out, usage)
    out.info["pairs_asked"] = asked
    return answered


def _template_rank_logits(clf, image_feats, class_names) -> torch.Tensor:
    """The reference's first stage: one sentence per class, the capitalised ``"a photo of a {c}."`` FuDD uses."""
    sentences = {c: [fudd_text(fudd_template(c))] for c in class_names}
    return METHODS["templates"](clf, image_feats, class_names, MethodOptions(sentences=sentences, aggregation="mean_embedding")).logits


def _report_unmatched(unmatched: list[str], total: int, class_names: list[str], source: str | None, out: MethodOutput) -> None:
    """Pairs naming no two of the run's classes: an error when none matched, else a warning row."""
    if not unmatched and total:
        return
    where = f"pair file '{source}'" if source else "the differential descriptions"
    shown = ", ".join(f"'{key}'" for key in unmatched[:5]) + (", ..." if len(unmatched) > 5 else "")
    valid = f"names from the class list ('{class_names[0]}', ...) or integer indices 0..{len(class_names) - 1} into it"
    if len(unmatched) == total:
        raise ConfigError(f"{where}: none of its {total} pairs names two of this run's classes ({shown}). Pair classes "
                          f"must be {valid}; check that the file belongs to these classes, in this order.")
    out.warnings.append({"item": f"{len(unmatched)} pairs", "stage": "differential", "severity": "warning",
                         "message": f"{where}: {len(unmatched)} of {total} pairs name no two of this run's classes "
                                    f"and were skipped: {shown}. Valid: {valid}."})
    log.warning("%d of %d FuDD pairs match no class of this run: %s", len(unmatched), total, shown)


@register_method("fudd")
def _fudd(clf, image_feats, class_names, options):
    extra = options.extra
    k = int(extra.get("fudd_k", 10))
    has_text_source = options.descriptors is not None or options.llm is not None
    base = extra.get("fudd_base") or ("cbd" if has_text_source else "templates")
    if base == "fudd" or base not in METHODS:
        raise ConfigError(f"--fudd-base '{base}' is not a first-stage method. Valid: name, templates, cbd, waffle.")
    first = METHODS[base](clf, image_feats, class_names, options)
    rank = extra.get("fudd_rank", "base")
    if rank == "template":
        rank_logits = _template_rank_logits(clf, image_feats, class_names)
    elif rank == "base":
        rank_logits = first.logits
    else:
        raise ConfigError(f"--fudd-rank '{rank}' is unknown. Valid: base (the run's best first scores), template.")
    sets = ambiguous_sets(rank_logits, k)  # [N, k]
    pairs, unique = most_frequent_pairs(sets, class_names, extra.get("max_pairs"))
    out = MethodOutput(first.logits, first.probs, warnings=list(first.warnings), info=dict(first.info))
    out.llm_calls, out.llm_tokens = first.llm_calls, first.llm_tokens
    out.artifacts.update(first.artifacts)
    if extra.get("pairs_file"):
        pair_descriptions = load_pair_file(extra["pairs_file"])
    elif options.llm is not None:
        pair_descriptions = _ask_pairs(pairs, options, out)
    else:
        raise ConfigError("method 'fudd' needs differential descriptions: --pairs FILE, or an LLM with --llm-model.")
    table = build_pair_table(pair_descriptions, class_names)
    if table.unmatched or extra.get("pairs_file"):
        _report_unmatched(table.unmatched, len(pair_descriptions), class_names, extra.get("pairs_file"), out)
    text_feats = clf.encoder.encode_texts([fudd_text(t) for t in table.texts])  # [V, D]
    result = rerank(image_feats, sets, table, text_feats, clf.model.logit_scale)
    logits = result.logits + clf.model.logit_bias if clf.model.logit_bias is not None else result.logits
    out.logits, out.probs = logits, probabilities(logits, clf.model.score_rule)
    first_top, new_top = first.logits.argmax(1), out.logits.argmax(1)
    out.info.update(fudd_base=base, fudd_rank=rank, fudd_k=int(sets.shape[1]), unique_pairs=unique,
                    pairs_answered=len(table.sentences), pairs_unmatched=len(table.unmatched), images_moved=int((first_top != new_top).sum()))
    out.artifacts["pairs"] = {key: value for key, value in pair_descriptions.items()}
    if options.explain:
        moves = explain_moves(image_feats, first_top, new_top, table, text_feats, class_names)
        base_expl = first.explanations or [None] * len(moves)
        out.explanations = [{**(b or {}), **({"differential": m} if m else {})} or None for b, m in zip(base_expl, moves)]
    return out


def estimate_llm_cost(clf, image_feats: torch.Tensor | None, class_names: list[str], method: str, options: MethodOptions) -> dict[str, Any]:
    """What a run of ``method`` would spend on the LLM now (--dry-run): per stage, calls and approximate tokens.

    FuDD's pairs depend on the images: they are ranked with the first-stage method when its text needs no LLM
    call (a descriptor file, or every answer cached), else with templates — an estimate, as the real run may
    rank a little differently.
    """
    from .descriptors import estimate_descriptors, pair_requests

    stages: dict[str, Any] = {}
    needs_descriptors = method == "cbd" or (method == "fudd" and (options.extra.get("fudd_base") in (None, "cbd")))
    descriptors_free = options.descriptors is not None
    if needs_descriptors and options.descriptors is None and options.llm is not None:
        prompt = load_prompt("descriptors", options.prompts_dir, options.extra.get("descriptor_prompt_file"))
        est = estimate_descriptors(class_names, options.llm, prompt, options.domain_hint)
        stages["descriptors"] = est
        descriptors_free = est.to_call == 0
    if method == "cupl" and not options.extra.get("cupl_file") and options.llm is not None:
        from .cupl import PROMPT_NAME, CuplConfig, estimate_cupl

        prompt = load_prompt(PROMPT_NAME, options.prompts_dir, options.extra.get("cupl_prompt_file"))
        stages["cupl sentences"] = estimate_cupl(class_names, options.llm, prompt, CuplConfig.from_extra(options.extra),
                                                 options.domain_hint)
    if method == "fudd" and not options.extra.get("pairs_file") and options.llm is not None and image_feats is not None:
        base = options.extra.get("fudd_base") or ("cbd" if descriptors_free else "templates")
        if base == "cbd" and not descriptors_free:
            base = "templates"
        ranking = METHODS[base](clf, image_feats, class_names, options).logits
        if options.extra.get("fudd_rank") == "template":
            ranking = _template_rank_logits(clf, image_feats, class_names)
        sets = ambiguous_sets(ranking, int(options.extra.get("fudd_k", 10)))
        pairs, unique = most_frequent_pairs(sets, class_names, options.extra.get("max_pairs"))
        prompt = load_prompt("differential", options.prompts_dir, options.extra.get("differential_prompt_file"))
        stages["differential pairs"] = options.llm.estimate(list(pair_requests(pairs, prompt, options.domain_hint).values()))
        stages["unique pairs in the ambiguous sets"] = unique
    return stages
