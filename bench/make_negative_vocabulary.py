"""Regenerate vlmcls/data/negative_vocabulary.txt, the word list the `unknown` stage mines negatives from.

Not run by vlmcls: the list is committed, so nothing is downloaded at run time. To regenerate:

    pip install --target /tmp/vocab english-words==2.0.2 wordnet-lookup==1.3.4
    PYTHONPATH=/tmp/vocab python bench/make_negative_vocabulary.py

Sources and licences: the words of `web2` (Webster's Second International, 1934; public domain) as packaged by
`english-words` (MIT), kept only where they are WordNet lemmas, tested with `wordnet-lookup` (MIT; WordNet 3.0,
Princeton's WordNet licence, a permissive BSD-style licence). Words that read as verbs or adverbs by their ending
are dropped (NegLabel mines nouns and adjectives), then a fixed 20,000 are kept by hash order.
"""

import hashlib
from pathlib import Path

from english_words import get_english_words_set
from wordnet_lookup.find_wordnet import _hash_exists

SIZE = 20_000
OUT = Path(__file__).resolve().parents[1] / "vlmcls" / "data" / "negative_vocabulary.txt"

words = get_english_words_set(["web2"], lower=True, alpha=True)
kept = [w for w in words if w.isascii() and w.isalpha() and 4 <= len(w) <= 11 and _hash_exists(w)
        and not w.endswith(("ly", "ing", "ed", "ize", "ise"))]
kept = sorted(sorted(kept, key=lambda w: hashlib.sha256(w.encode()).hexdigest())[:SIZE])
header = ("# Negative vocabulary for `unknown` (NegLabel-style). web2 (public domain) via english-words (MIT), "
          "filtered to WordNet lemmas via wordnet-lookup (MIT; WordNet licence). Made by "
          "bench/make_negative_vocabulary.py.\n")
OUT.write_text(header + "\n".join(kept) + "\n", encoding="utf-8")
print(f"{len(kept)} words -> {OUT}")
