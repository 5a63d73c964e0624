"""CuPL ("customized prompts via language models", Pratt et al. 2023): LLM-written sentences as class text.

Each class is described by whole sentences an LLM writes when asked, in several wordings, what a photo of it
looks like; the sentences are encoded and averaged like a template ensemble (the renormalised mean embedding),
where CbD encodes "{class}, which has {descriptor}" and averages the similarities.

The reference's defaults, reproduced here: every question variant is asked 10 times at temperature 0.99 with
at most 50 tokens, an answer is cut at its first full stop (the reference stops generation at ".") and keeps
it, and repeated sentences stay in (they weigh more in the mean, as in the reference). Each sample is its own
cached request (the seed is offset by the sample number), so a re-run asks nothing and a half-finished run keeps
what it got. A class whose every answer failed falls back to "a photo of a {class}." with a warning row.

The prompt file (``prompts/cupl.toml``) holds the question variants: every user message in its final run of
user messages is one question, asked with everything before that run (system message, worked examples).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from ..llm.descriptors import ErrorRow, read_class_lists
from ..errors import ConfigError
from ..llm.client import CallEstimate, LLMClient, Messages, Usage
from ..llm.prompts import PromptTemplate, load_prompt
from ..templates import wordify
from .registry import HEAD, MethodRecord, option, register

__all__ = [
    "CuplConfig",
    "question_requests",
    "parse_cupl_sentence",
    "generate_cupl_sentences",
    "estimate_cupl",
    "load_cupl_file",
    ]

log = logging.getLogger(__name__)

PROMPT_NAME = "cupl"
FALLBACK_TEMPLATE = "a photo of a {}."  # what a class without any usable answer is scored with
_MAX_SENTENCE_CHARS = 300  # longer answers are prose, not a caption; CLIP truncates at 77 tokens anyway
_SENTENCE_END = re.compile(r"(?<=[^\s.])\.(?=\s|$)")  # a full stop after a word, not "..." or "3.5"
_LEADING_NOISE = re.compile(r"^\s*(?:[-*•]|\d{1,3}[.)]|(?:caption|answer|sentence)\s*:)\s*", re.IGNORECASE)


@dataclass
class CuplConfig:
    """CuPL's options; the sampling defaults are the reference's."""

    samples: int = option(10, "Answers sampled per question variant (the reference: 10).", minimum=1,
                          was="--cupl-samples")
    temperature: float = option(0.99, "Sampling temperature, high so the samples differ (the reference: 0.99).",
                                minimum=0.0, maximum=2.0, was="--cupl-temperature")
    max_tokens: int = option(50, "Completion length per answer (the reference: 50).", minimum=1,
                             was="--cupl-max-tokens")
    file: Path | None = option(None, "CuPL sentence JSON {class: [sentence, …]} (no LLM needed).", file="file",
                               was="--cupl-file")
    prompt_file: Path | None = option(None, "A prompt file for CuPL's questions (default: the 'cupl' prompt).",
                                      file="file", was="--cupl-prompt-file")
    with_templates: bool = option(False, "Add the templates' sentences to each class's mean (the paper's hybrid).",
                                  was="--cupl-with-templates")
    templates: str | None = option(None, "With with_templates: the template set or file (default imagenet80).",
                                   file="maybe")
    aggregation: str | None = option(None, "mean_similarity (CbD) or mean_embedding (CLIP ensembles; the default).",
                                     choices=("mean_similarity", "mean_embedding"), was="--aggregation")


# -- asking -------------------------------------------------------------------------------------------------
def question_requests(
    class_names: Sequence[str], prompt: PromptTemplate, domain_hint: str | None = None
) -> dict[tuple[str, int], Messages]:
    """One request per (class, question variant): the shared context followed by that one question."""
    prompt.check_supports({"class_name", "domain_hint"}, {"class_name"})
    if domain_hint and "domain_hint" not in prompt.placeholders:
        prompt.check_supports({"class_name", "domain_hint"}, {"class_name", "domain_hint"})
    requests: dict[tuple[str, int], Messages] = {}
    for name in dict.fromkeys(class_names):
        messages = prompt.render(class_name=name, domain_hint=domain_hint)
        first_question = len(messages)
        while first_question > 0 and messages[first_question - 1]["role"] == "user":
            first_question -= 1
        context = messages[:first_question]
        for index, question in enumerate(messages[first_question:]):
            requests[(name, index)] = [*context, question]
    return requests


def parse_cupl_sentence(text: str) -> str | None:
    """The sentence in one answer: its first sentence, ending in ".", or None when there is none.

    The reference stops generation at the first "." and appends one; a chat model may say more, so the answer
    is cut at its first full stop. Bullets, quotes and a "Caption:" label are dropped.
    """
    if not text:
        return None
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = _LEADING_NOISE.sub("", line.replace("**", "")).strip().strip("\"'`“”").strip()
    match = _SENTENCE_END.search(line)
    sentence = " ".join((line[: match.start()] if match else line).split()).rstrip(".!?;:, ")
    if len(sentence) < 3 or len(sentence) > _MAX_SENTENCE_CHARS:
        return None
    return sentence + "."


def _sampling_client(client: LLMClient, config: CuplConfig) -> LLMClient:
    """A client on the same endpoint and cache with CuPL's sampling settings (they enter every cache key)."""
    sampled = replace(client.config, temperature=config.temperature, max_tokens=config.max_tokens)
    return LLMClient(sampled, client.store, refresh=client.refresh)


def generate_cupl_sentences(
    class_names: Sequence[str],
    client: LLMClient,
    prompt: PromptTemplate,
    config: CuplConfig = CuplConfig(),
    domain_hint: str | None = None,
) -> tuple[dict[str, list[str]], list[ErrorRow], Usage]:
    """CuPL sentences for every class (cached), the rows of classes that fell back, and the usage of this run."""
    requests = question_requests(class_names, prompt, domain_hint)
    keys = list(requests)
    sentences: dict[str, list[str]] = {name: [] for name in dict.fromkeys(class_names)}
    failures: dict[str, list[str]] = {}
    usage = Usage()
    with _sampling_client(client, config) as sampler:
        for sample in range(config.samples):  # the sample number offsets the seed (and the key)
            answers = sampler.complete_many([requests[k] for k in keys], variant=sample)
            for (name, _question), answer in zip(keys, answers):
                if usage.record(answer) is None:  # the one accounting step (vlmcls.llm.client.Usage.record)
                    failures.setdefault(name, []).append(str(answer))
                    continue
                sentence = parse_cupl_sentence(answer.text)
                if sentence is not None:
                    sentences[name].append(sentence)
    rows: list[ErrorRow] = []
    for name, found in sentences.items():
        asked = len([k for k in keys if k[0] == name]) * config.samples
        if found:
            if len(found) < asked:
                log.info("CuPL: %d of %d answers about '%s' gave no sentence", asked - len(found), asked, name)
            continue
        sentences[name] = [FALLBACK_TEMPLATE.format(wordify(name))]
        if name in failures:
            rows.append(ErrorRow(name, "cupl", "error", f"{failures[name][-1]} Using '{sentences[name][0]}'."))
        else:
            rows.append(ErrorRow(name, "cupl", "warning",
                                 f"none of the {asked} answers held a sentence; using '{sentences[name][0]}'."))
    return sentences, rows, usage


def estimate_cupl(
    class_names: Sequence[str],
    client: LLMClient,
    prompt: PromptTemplate,
    config: CuplConfig = CuplConfig(),
    domain_hint: str | None = None,
) -> CallEstimate:
    """What :func:`generate_cupl_sentences` would spend now (for --dry-run); nothing is sent."""
    requests = list(question_requests(class_names, prompt, domain_hint).values())
    with _sampling_client(client, config) as sampler:
        parts = [sampler.estimate(requests, variant=sample) for sample in range(config.samples)]
    return CallEstimate(
        requests=sum(p.requests for p in parts),
        cached=sum(p.cached for p in parts),
        to_call=sum(p.to_call for p in parts),
        approx_prompt_tokens=sum(p.approx_prompt_tokens for p in parts),
        approx_completion_tokens=sum(p.approx_completion_tokens for p in parts),
    )


# -- sentences from a file ----------------------------------------------------------------------------------
def load_cupl_file(path: str | Path) -> dict[str, list[str]]:
    """A CuPL sentence file ``{"class": ["sentence", ...]}`` (the format the CuPL release ships), read as is."""
    data = read_class_lists(path, "CuPL sentence file", "sentence")
    return {str(k): [s for s in v if s.strip()] for k, v in data.items()}


# -- the method's record --------------------------------------------------------------------------------------


def _sentences(context, config: CuplConfig, report) -> dict[str, list[str]]:
    """Every class's sentences: from ``cupl.file`` when given, else from the LLM (cached)."""
    names = context.class_names
    if config.file is not None:
        loaded = load_cupl_file(config.file)
        for c in names:
            if not loaded.get(c):
                report.warnings.append(ErrorRow(c, "import", "warning", "no CuPL sentences for this class; using "
                                                f"'{FALLBACK_TEMPLATE.format(wordify(c))}'").to_dict())
        return {c: loaded.get(c) or [FALLBACK_TEMPLATE.format(wordify(c))] for c in names}
    if context.llm is None:
        raise ConfigError("method 'cupl' needs sentences: an LLM (an LLM model and endpoint), or a sentence file "
                          "in option cupl.file.")
    prompt = load_prompt(PROMPT_NAME, context.options.prompts_dir, config.prompt_file)
    sentences, rows, usage = generate_cupl_sentences(names, context.llm, prompt, config,
                                                     context.options.domain_hint)
    report.warnings.extend(r.to_dict() for r in rows)
    report.add_usage(usage)
    return sentences


def _prepare_cupl(context, config: CuplConfig, upstream, gather, report):
    from ..templates import apply_templates, load_templates
    from .heads import linear_head

    sentences = _sentences(context, config, report)
    if config.with_templates:  # the paper's hybrid: LLM sentences and templates in one mean
        templates = load_templates(config.templates or "imagenet80")
        sentences = {c: [*found, *apply_templates(templates, c)] for c, found in sentences.items()}
    report.artifacts["cupl_sentences"] = sentences
    return linear_head(context, sentences, config.aggregation or "mean_embedding", report)


def _estimate_cupl(context, config: CuplConfig, image_feats, head=None) -> dict[str, Any]:
    if config.file is not None or context.llm is None:
        return {}
    prompt = load_prompt(PROMPT_NAME, context.options.prompts_dir, config.prompt_file)
    return {"cupl sentences": estimate_cupl(context.class_names, context.llm, prompt, config,
                                            context.options.domain_hint)}


register(MethodRecord(
    name="cupl", kind=HEAD, summary="CuPL: LLM-written sentences averaged like a template ensemble",
    numpy=True,
    text_source="LLM sentences (or a sentence file)", config=CuplConfig, prepare=_prepare_cupl,
    cost="classes × question variants × samples LLM calls (cached), unless a sentence file is given",
    asks_llm=lambda config: config.file is None, estimate=_estimate_cupl,
))
