"""Span alignment: offsets are Python str indices; unicode, CRLF, repeats, tolerance."""

from alllabel.text.spans import align_entities, occurrence_of


def place(text, ents, labels=("L", "M")):
    a = align_entities(
        text,
        [dict(label=l, text=t, **({"occurrence": o} if o else {})) for l, t, o in ents],
        labels,
    )
    return [(s.start, s.end, s.label, text[s.start : s.end]) for s in a.spans], a


def test_unicode_formulas_subscripts_emoji_cjk():
    text = "😀 Cu(ClO4)2·6H2O in H₂O, 金属有机框架 MOF-5 😀 H₂O"
    spans, a = place(
        text,
        [("L", "Cu(ClO4)2·6H2O", 0), ("M", "H₂O", 0), ("M", "H₂O", 0), ("L", "金属有机框架", 0)],
    )
    assert all(text[s:e] == t for s, e, _, t in spans)
    assert [t for *_, t in spans] == ["Cu(ClO4)2·6H2O", "H₂O", "金属有机框架", "H₂O"]
    assert spans[0][0] == 2  # the emoji is one code point, as in Python and Label Studio's offsets
    assert a.dropped == 0


def test_crlf_and_whitespace_and_case_tolerance():
    text = "stirred at\r\nroom  temperature for 3 D"
    spans, _ = place(text, [("L", "room temperature", 0), ("M", "3 d", 0), ("M", "at room", 0)])
    assert ("room  temperature" in [t for *_, t in spans]) and ("3 D" in [t for *_, t in spans])
    assert "at\r\nroom" in [t for *_, t in spans]


def test_repeated_mentions_in_text_order_and_no_duplicates():
    text = "DMF (5 mL) then DMF (2 mL)"
    spans, a = place(text, [("L", "DMF", 0), ("L", "DMF", 0), ("L", "DMF", 0)])
    assert [s for s, *_ in spans] == [0, 16] and len(a.not_found) == 1


def test_occurrence_hint_and_whole_words_first():
    text = "6H2O and H2O and H2O"
    spans, _ = place(text, [("L", "H2O", 0)])
    assert spans[0][0] == 9  # the whole word, not the tail of 6H2O
    spans, _ = place(
        text, [("L", "H2O", 3)]
    )  # occurrences count inside words too, as occurrence_of does
    assert spans[0][0] == 17
    assert occurrence_of(text, 17, 20) == 3 and occurrence_of("a b", 0, 1) is None


def test_bad_labels_and_missing_strings_are_counted():
    _, a = place("abc", [("X", "abc", 0), ("L", "zzz", 0), ("L", "", 0)])
    assert len(a.bad_label) == 1 and len(a.not_found) == 2 and a.spans == []


def test_overlapping_spans_of_different_labels_are_kept():
    spans, _ = place(
        "zinc nitrate hexahydrate", [("L", "zinc nitrate hexahydrate", 0), ("M", "zinc nitrate", 0)]
    )
    assert len(spans) == 2


def test_occurrence_hints_and_alignment_count_overlapping_mentions_alike():
    text = "aaa x aa"
    assert occurrence_of(text, 1, 3) == 2 and occurrence_of(text, 6, 8) == 3
    spans, _ = place(text, [("L", "aa", occurrence_of(text, 6, 8))])
    assert spans == [(6, 8, "L", "aa")]
