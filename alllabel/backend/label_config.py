"""Reading a Label Studio labeling config with the SDK's own parser (``LabelInterface``).

Any config whose controls all point at ``<Text>`` objects gets the ALLabel queue; what can be
pre-annotated today is one ``<Labels>`` group on the config's only ``<Text>``. Everything else
is left to annotators, and said so (``TextConfig.left_to_humans``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache

from alllabel.prelabel.classify import ChoiceSchema
from alllabel.prelabel.prompt import LabelSchema

# Joins the values of several <Text> objects (config order) into the one text the selection reads.
TEXT_JOIN = "\n\n"


class UnsupportedConfig(ValueError):
    """The project's labeling config is not one this backend can work on."""


@dataclass(frozen=True)
class NERConfig:
    from_name: str  # the <Labels name=...>
    to_name: str  # the <Text name=...>
    value_key: str  # task["data"][value_key] holds the text ("$text" -> "text")
    labels: tuple[str, ...]
    descriptions: tuple[tuple[str, str], ...] = ()

    def schema(self) -> LabelSchema:
        return LabelSchema(list(self.labels), dict(self.descriptions))


@dataclass(frozen=True)
class ChoicesConfig:
    from_name: str  # the <Choices name=...>
    to_name: str  # the <Text name=...>
    choices: tuple[str, ...]
    descriptions: tuple[tuple[str, str], ...] = ()
    multiple: bool = False  # choice="multiple"; "single" and "single-radio" take one value

    def schema(self) -> ChoiceSchema:
        return ChoiceSchema(self.choices, dict(self.descriptions), self.multiple)


@dataclass(frozen=True)
class TextConfig:
    """A text project: the texts the selection reads, and the one group we pre-annotate, if any."""

    texts: tuple[tuple[str, str], ...]  # (<Text name>, task data key), in config order
    ner: NERConfig | None  # the pre-annotated <Labels> group
    left_to_humans: tuple[str, ...] = ()  # e.g. '<Choices name="x">'
    why_left: str = ""  # why those controls are not pre-annotated
    classify: ChoicesConfig | None = None  # or the pre-annotated <Choices> group (never both)

    @property
    def value_keys(self) -> tuple[str, ...]:
        return tuple(key for _, key in self.texts)

    @property
    def prelabeled(self) -> NERConfig | ChoicesConfig | None:
        """The group the backend pre-annotates, if any."""
        return self.ner or self.classify


def _interface(xml: str):
    from label_studio_sdk.label_interface import LabelInterface  # ~0.6 s to import: on first use

    if not xml or not xml.strip():
        raise UnsupportedConfig("the labeling config is empty")
    try:
        ET.fromstring(xml)  # checked first: the SDK's own syntax error is a private type
    except ET.ParseError as e:
        raise UnsupportedConfig(f"the labeling config is not valid XML: {e}") from None
    return LabelInterface(xml)


def _texts(li) -> tuple[tuple[str, str], ...]:
    others = sorted(f'<{o.tag} name="{o.name}">' for o in li.objects if o.tag != "Text")
    if others:
        raise UnsupportedConfig(
            f"the labeling config has {', '.join(others)}: ALLabel works on text projects only "
            "(<Text> objects); remove the other objects or use another backend"
        )
    texts = []
    for o in li.objects:
        value = o.value or ""
        if not value.startswith("$") or len(value) < 2:
            raise UnsupportedConfig(
                f'<Text name="{o.name}"> must read a task field, e.g. value="$text" (got {value!r})'
            )
        texts.append((o.name, value[1:]))
    if not texts:
        raise UnsupportedConfig("the labeling config has no <Text> object")
    return tuple(texts)


def _values(ctl, child: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """A control's values and their ``hint`` descriptions."""
    names = [v for v in ctl.labels if v]
    if not names:
        raise UnsupportedConfig(
            f'<{ctl.tag} name="{ctl.name}"> has no <{child} value="..."/> children'
        )
    if len(set(names)) != len(names):
        raise UnsupportedConfig(f'duplicate values in <{ctl.tag} name="{ctl.name}">')
    hints = tuple(
        (v, t.attr["hint"]) for v, t in ctl.labels_attrs.items() if (t.attr or {}).get("hint")
    )
    return tuple(names), hints


def _ner(ctl, value_key: str) -> NERConfig:
    names, hints = _values(ctl, "Label")
    return NERConfig(ctl.name, ctl.to_name[0], value_key, names, hints)


def _choices(ctl) -> ChoicesConfig:
    names, hints = _values(ctl, "Choice")
    multiple = (ctl.attr.get("choice") or "single") == "multiple"
    return ChoicesConfig(ctl.name, ctl.to_name[0], names, hints, multiple)


@lru_cache(maxsize=64)  # read on every snapshot; the result is immutable
def parse_label_config(xml: str) -> TextConfig:
    """The text project a config describes, or ``UnsupportedConfig`` saying what to change."""
    li = _interface(xml)
    texts = _texts(li)
    controls = list(li.controls)
    if not controls:
        raise UnsupportedConfig("the labeling config has no control (e.g. <Labels>, <Choices>)")
    names = dict(texts)
    for c in controls:
        bad = [n for n in c.to_name if n not in names]
        if bad:
            raise UnsupportedConfig(
                f'<{c.tag} name="{c.name}"> points (toName) at {", ".join(bad)}, '
                "which is not a <Text> object of the config"
            )
    labels = [c for c in controls if c.tag == "Labels"]
    choices = [c for c in controls if c.tag == "Choices"]
    ner, classify, why = None, None, ""
    if len(texts) > 1:
        why = f"the config has {len(texts)} <Text> objects; pre-annotation needs exactly one"
    elif len(labels) > 1:
        why = f"the config has {len(labels)} <Labels> groups; pre-annotation covers exactly one"
    elif labels:
        ner = _ner(labels[0], texts[0][1])
    elif len(choices) > 1:
        why = f"the config has {len(choices)} <Choices> groups; pre-annotation covers exactly one"
    elif choices:
        classify = _choices(choices[0])
    done = ner or classify
    left = tuple(
        f'<{c.tag} name="{c.name}">' for c in controls if done is None or c.name != done.from_name
    )
    if ET.fromstring(xml).find(".//Relations") is not None:
        left += ("<Relations>",)
    if left and not why:
        why = "ALLabel pre-annotates one <Labels> or one <Choices> group on one <Text> only"
    return TextConfig(texts, ner, left, why if left else "", classify)


def config_warning(cfg: TextConfig) -> str | None:
    """What annotators must do themselves, in one line (``/status`` warnings and the log)."""
    if not cfg.left_to_humans:
        return None
    group, kind = cfg.prelabeled, "Labels" if cfg.ner else "Choices"
    done = f'<{kind} name="{group.from_name}"> is pre-annotated; ' if group else ""
    return (
        f"{done}{', '.join(cfg.left_to_humans)} left to annotators ({cfg.why_left}); "
        "the queue follows the ALLabel order for every control"
    )
