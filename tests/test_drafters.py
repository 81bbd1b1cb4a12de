"""The speculative drafters (runtimes/drafters.py): prompt lookup and its back-off, the MTP heads' drafts."""

import numpy as np
import pytest
from omnicoder.runtimes.drafters import MtpDrafter, NgramDrafter
from omnicoder.runtimes.sampling import Sampler, SamplingParams


def greedy() -> Sampler:
    return Sampler(SamplingParams(temperature=0.0))


def test_ngram_proposes_what_followed_the_last_occurrence():
    d = NgramDrafter(max_draft=4, max_ngram=3, min_ngram=1)
    history = [1, 2, 3, 4, 5, 9, 1, 2, 3]
    assert [t for t, _ in d.propose(history, None, 4, greedy())] == [4, 5]  # length starts at max_draft // 2
    d.observe(2, 2)  # fully accepted: the length doubles
    assert d.lookup(history, 4) == [4, 5, 9, 1]


def test_ngram_prefers_the_longest_and_most_recent_match():
    d = NgramDrafter(max_draft=8, max_ngram=3, min_ngram=1)
    # "7 8" occurs twice; the most recent is followed by 30; "6 7 8" (longer) is followed by 20
    history = [6, 7, 8, 20, 0, 7, 8, 30, 0, 6, 7, 8]
    assert d.lookup(history, 1) == [20]
    # "5 7 8" is new, so the 2-gram "7 8" decides: its newest earlier occurrence (history[10:12]) was followed by 5
    assert d.lookup([*history, 5, 7, 8], 1) == [5]


def test_ngram_never_matches_the_suffix_itself_and_handles_a_rewind():
    d = NgramDrafter(max_draft=4, max_ngram=2, min_ngram=2)
    assert d.lookup([1, 2], 4) == []
    assert d.lookup([1, 2, 3, 1, 2], 4) == [3, 1, 2]
    assert d.lookup([5, 6], 4) == []  # a shorter (new) history: indexed afresh, nothing from the old one


def test_ngram_backs_off_after_misses_and_recovers():
    d = NgramDrafter(max_draft=8, max_ngram=1, min_ngram=1, patience=2)
    history = [1, 2, 1, 2, 1]
    assert d.propose(history, None, 8, greedy())
    d.observe(4, 0)
    assert d.length == 2  # a rejected first guess halves the length
    d.observe(2, 0)  # second miss in a row: silent for one call
    assert d.propose(history, None, 8, greedy()) == []
    assert d.propose(history, None, 8, greedy())  # drafting again
    d.observe(2, 0)
    d.observe(1, 0)
    assert d.propose(history, None, 8, greedy()) == [] and d.propose(history, None, 8, greedy()) == []  # pause 2
    assert d.propose(history, None, 8, greedy())
    d.observe(1, 1)
    assert d.length == 2 and d._pause == 1


def test_ngram_partial_accept_sets_the_length():
    d = NgramDrafter(max_draft=8)
    d.observe(6, 2)
    assert d.length == 3


def test_ngram_rejects_bad_settings():
    with pytest.raises(ValueError, match="min_ngram"):
        NgramDrafter(max_ngram=1, min_ngram=2)
    with pytest.raises(ValueError, match="max_draft"):
        NgramDrafter(max_draft=0)


def test_mtp_drafter_takes_each_heads_argmax():
    heads = np.array([[0.0, 5.0, 1.0], [3.0, 0.0, 1.0], [0.0, 0.0, 9.0]])
    drafts = MtpDrafter().propose([1], heads, 2, greedy())
    assert [t for t, _ in drafts] == [1, 0]
    assert all(p is not None and abs(p.sum() - 1) < 1e-6 for _, p in drafts)
    assert MtpDrafter().propose([1], None, 2, greedy()) == []
