"""Labeling configs read with Label Studio's own parser: every text project, and what is left to humans."""

import pytest

from alllabel.backend import ls_format
from alllabel.backend.label_config import UnsupportedConfig, config_warning, parse_label_config
from alllabel.text.spans import Span

TEXT = '<Text name="text" value="$text"/>'
NER = '<Labels name="ner" toName="text"><Label value="PER" hint="a person"/><Label value="ORG"/></Labels>'
CHOICES = '<Choices name="label" toName="text" choice="single"><Choice value="pos"/><Choice value="neg"/></Choices>'


def view(*parts: str) -> str:
    return "<View>" + "".join(parts) + "</View>"


def test_one_labels_group_is_pre_annotated_with_its_hints():
    cfg = parse_label_config(view(TEXT, NER))
    assert cfg.ner.from_name == "ner" and cfg.ner.to_name == "text"
    assert cfg.ner.labels == ("PER", "ORG") and cfg.ner.descriptions == (("PER", "a person"),)
    assert cfg.left_to_humans == () and config_warning(cfg) is None


@pytest.mark.parametrize(
    "controls",
    [
        '<TextArea name="summary" toName="text"/>',
        '<Taxonomy name="tax" toName="text"><Choice value="a"/></Taxonomy>',
        '<Rating name="stars" toName="text"/>',
        '<Number name="n" toName="text"/>',
    ],
)
def test_any_control_on_a_text_gets_the_queue_and_is_left_to_humans(controls):
    cfg = parse_label_config(view(TEXT, controls))
    assert cfg.texts == (("text", "text"),) and cfg.ner is None
    (left,) = cfg.left_to_humans
    assert left.split()[0][1:] in controls and left in config_warning(cfg)


@pytest.mark.parametrize(
    "mode, multiple", [("single", False), ("single-radio", False), ("multiple", True)]
)
def test_one_choices_group_is_pre_annotated(mode, multiple):
    xml = view(TEXT, CHOICES.replace('"single"', f'"{mode}"').replace('"pos"', '"pos" hint="good"'))
    cfg = parse_label_config(xml)
    assert cfg.prelabeled is cfg.ner and cfg.ner.labels == () and config_warning(cfg) is None
    (group,) = cfg.ner.schema().choices
    assert group.name == "label" and group.values == ("pos", "neg")
    assert group.multiple is multiple and group.descriptions == (("pos", "good"),)
    assert (cfg.ner.choices[0].from_name, cfg.ner.choices[0].to_name) == ("label", "text")


def test_labels_with_choices_are_pre_annotated_together():
    cfg = parse_label_config(view(TEXT, NER, CHOICES))
    assert cfg.prelabeled is cfg.ner and cfg.ner.labels == ("PER", "ORG")
    assert [c.from_name for c in cfg.ner.choices] == ["label"]
    assert cfg.left_to_humans == () and config_warning(cfg) is None


def test_several_choices_groups_and_labels_are_one_schema_per_region_choices_left():
    second = CHOICES.replace('name="label"', 'name="topic"').replace('"single"', '"multiple"')
    per_region = CHOICES.replace('name="label"', 'name="certain"').replace(
        "<Choices ", '<Choices perRegion="true" '
    )
    cfg = parse_label_config(view(TEXT, NER, CHOICES, second, per_region))
    schema = cfg.ner.schema()
    assert schema.labels == ["PER", "ORG"]
    assert [(g.name, g.multiple) for g in schema.choices] == [("label", False), ("topic", True)]
    assert cfg.left_to_humans == ('<Choices name="certain">',)
    assert config_warning(cfg).startswith(
        '<Labels name="ner">, <Choices name="label">, <Choices name="topic"> are pre-annotated;'
    )


def test_two_labels_groups_are_pre_annotated_in_one_prompt_and_relations_left():
    second = (
        '<Labels name="roles" toName="text"><Label value="PER" hint="who acts"/>'
        '<Label value="TIME"/></Labels>'
    )
    cfg = parse_label_config(
        view(TEXT, NER, second, '<Relations><Relation value="r"/></Relations>')
    )
    ner = cfg.ner
    # PER is in both groups: shown qualified, so every answer has one home.
    assert ner.labels == ("ner: PER", "ORG", "roles: PER", "TIME")
    assert dict(ner.descriptions) == {"ner: PER": "a person", "roles: PER": "who acts"}
    assert ner.source("roles: PER") == ("roles", "PER") and ner.source("TIME") == ("roles", "TIME")
    assert ner.label_of("ner", "PER") == "ner: PER" and ner.label_of("other", "PER") is None
    assert cfg.left_to_humans == ("<Relations>",)
    assert config_warning(cfg).startswith(
        '<Labels name="ner">, <Labels name="roles"> are pre-annotated; <Relations> left'
    )
    span = Span(0, 3, "roles: PER", "Ann", 0.5)
    region = ls_format.span_result(ner, span)
    assert region["from_name"] == "roles" and region["value"]["labels"] == ["PER"]
    assert ls_format.result_spans([region], ner) == [{"start": 0, "end": 3, "label": "roles: PER"}]


def test_several_texts_are_read_joined_in_config_order():
    cfg = parse_label_config(
        view('<Text name="title" value="$title"/>', TEXT, CHOICES.replace('"text"', '"title"'))
    )
    assert cfg.value_keys == ("title", "text") and cfg.ner is None
    assert ls_format.task_text({"data": {"text": "body", "title": "Head"}}, cfg) == (
        "Head\n\nbody",
        None,
    )
    assert ls_format.task_text({"data": {"title": "Head"}}, cfg) == (
        None,
        "task data field 'text' is missing or not text",
    )


@pytest.mark.parametrize(
    "xml, reason",
    [
        (view(TEXT, '<Image name="img" value="$image"/>', CHOICES), '<Image name="img">'),
        (
            view('<HyperText name="h" value="$h"/>', '<Paragraphs name="p" value="$p"/>'),
            '<HyperText name="h">, <Paragraphs name="p">',
        ),
        (view(TEXT), "no control"),
        (view(CHOICES), "no <Text> object"),
        (
            view(TEXT, CHOICES.replace('toName="text"', 'toName="other"')),
            "points (toName) at other",
        ),
        (view('<Text name="text" value="text"/>', CHOICES), "must read a task field"),
        ("", "empty"),
        ("<View><Text", "not valid XML"),
    ],
)
def test_configs_that_are_not_text_projects_are_refused_with_a_reason(xml, reason):
    with pytest.raises(UnsupportedConfig, match=None) as e:
        parse_label_config(xml)
    assert reason in str(e.value)
