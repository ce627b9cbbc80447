"""Reading a Label Studio labeling config: we support one <Labels> control on one <Text>."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from alllabel.prelabel.prompt import LabelSchema


class UnsupportedConfig(ValueError):
    """The project's labeling config is not one this backend can pre-annotate."""


@dataclass(frozen=True)
class NERConfig:
    from_name: str  # the <Labels name=...>
    to_name: str  # the <Text name=...>
    value_key: str  # task["data"][value_key] holds the text ("$text" -> "text")
    labels: tuple[str, ...]
    descriptions: tuple[tuple[str, str], ...] = ()
    ignored: tuple[
        str, ...
    ] = ()  # other controls in the config, left to humans (e.g. "<Choices name='x'>")

    def schema(self) -> LabelSchema:
        return LabelSchema(list(self.labels), dict(self.descriptions))


def parse_label_config(xml: str) -> NERConfig:
    """The NER part of a config, or ``UnsupportedConfig`` saying what to change."""
    if not xml or not xml.strip():
        raise UnsupportedConfig("the labeling config is empty")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise UnsupportedConfig(f"the labeling config is not valid XML: {e}") from None
    tags = list(root.iter())
    texts = {t.get("name"): t for t in tags if t.tag == "Text" and t.get("name")}
    labels_tags = [t for t in tags if t.tag == "Labels"]
    others = sorted(
        {
            t.tag
            for t in tags
            if t.tag
            in (
                "HyperTextLabels",
                "ParagraphLabels",
                "RectangleLabels",
                "PolygonLabels",
                "KeyPointLabels",
                "BrushLabels",
                "Relations",
                "Choices",
                "TextArea",
                "Taxonomy",
                "Rating",
            )
        }
    )
    if not labels_tags:
        found = f" (found {', '.join(others)})" if others else ""
        raise UnsupportedConfig(
            f"no <Labels> control in the labeling config{found}: ALLabel supports named-entity configs, <Labels> on a <Text>"
        )
    on_text = [t for t in labels_tags if t.get("toName") in texts]
    if not on_text:
        raise UnsupportedConfig(
            "the <Labels> control must point (toName) at a <Text> object; other object types are not supported yet"
        )
    if len(on_text) > 1:
        raise UnsupportedConfig(
            f"the config has {len(on_text)} <Labels> controls on <Text>; ALLabel supports exactly one"
        )
    ctl = on_text[0]
    text = texts[ctl.get("toName")]
    value = text.get("value", "")
    if not value.startswith("$") or len(value) < 2:
        raise UnsupportedConfig(
            f'<Text name="{text.get("name")}"> must read a task field, e.g. value="$text" (got {value!r})'
        )
    names, descriptions = [], []
    for lab in ctl.iter("Label"):
        v = lab.get("value") or lab.get("alias")
        if not v:
            continue
        names.append(v)
        if lab.get("hint"):
            descriptions.append((v, lab.get("hint")))
    if not names:
        raise UnsupportedConfig(
            f'<Labels name="{ctl.get("name")}"> has no <Label value="..."/> children'
        )
    if len(set(names)) != len(names):
        raise UnsupportedConfig(f'duplicate label values in <Labels name="{ctl.get("name")}">')
    ignored = tuple(
        f'<{t.tag} name="{t.get("name")}">'
        for t in tags
        if t is not ctl and t.get("toName") and t.get("name")
    )
    return NERConfig(
        ctl.get("name"), text.get("name"), value[1:], tuple(names), tuple(descriptions), ignored
    )
