"""The no-training baseline: a lexical window matcher, the floor any trained model must beat."""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+", re.UNICODE)
# a word list reads best as words, not as 68 quoted items
_STOP = set(
    """
    a an the of in on at to for from by with and or is are was were be been what which who
    whom whose when where why how does do did can could should would will may might it its
    this that these those as into about than then there their they i you he she we my your his
    her our
    """.split()  # noqa: SIM905
)


def lexical_answer(question: str, context: str, span_words: int = 4, window: int = 10) -> str:
    """No-training baseline: the ``span_words``-word span, free of question words, whose
    surrounding ``window`` words share the most content words with the question."""
    q_words = {w.lower() for w in _WORD.findall(question)} - _STOP
    tokens = list(_WORD.finditer(context))
    if not tokens:
        return ""
    lowered = [t.group().lower() for t in tokens]
    best, best_score = (0, min(span_words, len(tokens)) - 1), -1.0
    for s in range(len(tokens)):
        e = min(s + span_words, len(tokens)) - 1
        if any(w in q_words for w in lowered[s : e + 1]):
            continue
        near = lowered[max(0, s - window) : s] + lowered[e + 1 : e + 1 + window]
        score = len(q_words.intersection(near))
        if score > best_score:
            best, best_score = (s, e), score
    return context[tokens[best[0]].start() : tokens[best[1]].end()]
