"""Reading a Label Studio labeling config with the SDK's own parser (``LabelInterface``).

Any config whose controls all point at ``<Text>`` objects gets the ALLabel queue. On a config
with one ``<Text>``, every ``<Labels>`` group and every ``<Choices>`` group (not ``perRegion``) is
pre-annotated, all in one call per task (``NERConfig``). Everything else is left to annotators,
and said so (``TextConfig.left_to_humans``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from functools import lru_cache

from alllabel.prelabel.prompt import ChoiceGroup, LabelSchema

# Joins the values of several <Text> objects (config order) into the one text the selection reads.
TEXT_JOIN = "\n\n"


class UnsupportedConfig(ValueError):
    """The project's labeling config is not one this backend can work on."""


@dataclass(frozen=True)
class ChoicesConfig:
    from_name: str  # the <Choices name=...>
    to_name: str  # the <Text name=...>
    choices: tuple[str, ...]
    descriptions: tuple[tuple[str, str], ...] = ()
    multiple: bool = False  # choice="multiple"; "single" and "single-radio" take one value

    def group(self) -> ChoiceGroup:
        """The group as the one-call prompt asks for it."""
        return ChoiceGroup(
            self.from_name, self.choices, descriptions=self.descriptions, multiple=self.multiple
        )


@dataclass(frozen=True)
class NERConfig:
    """The groups pre-annotated together, one call per task: the <Labels> groups' spans and the
    <Choices> groups' values (either may be absent, not both)."""

    from_name: str  # the (first) <Labels name=...> (no <Labels>: the first <Choices name=...>)
    to_name: str  # the <Text name=...>
    value_key: str  # task["data"][value_key] holds the text ("$text" -> "text")
    labels: tuple[str, ...]  # the labels the prompt shows (all groups)
    descriptions: tuple[tuple[str, str], ...] = ()
    # Several <Labels> groups, answered in one call: (prompt label, <Labels name>, its value).
    # A value found in two groups is shown as "<group>: <value>" so each answer has one home.
    groups: tuple[tuple[str, str, str], ...] = ()
    choices: tuple[ChoicesConfig, ...] = ()  # the <Choices> groups answered in the same call

    def schema(self) -> LabelSchema:
        return LabelSchema(list(self.labels), dict(self.descriptions), self.choice_groups())

    def choice_groups(self) -> tuple[ChoiceGroup, ...]:
        return tuple(c.group() for c in self.choices)

    def source(self, label: str) -> tuple[str, str]:
        """(<Labels name>, value) of a prompt label."""
        for shown, name, value in self.groups:
            if shown == label:
                return name, value
        return self.from_name, label

    def label_of(self, from_name: str, value: str) -> str | None:
        """The prompt label of a value in a group (None: not one of ours)."""
        if not self.groups:
            return value if from_name == self.from_name else None
        for shown, name, v in self.groups:
            if name == from_name and v == value:
                return shown
        return None


@dataclass(frozen=True)
class TextConfig:
    """A text project: the texts the selection reads, and the groups we pre-annotate, if any."""

    texts: tuple[tuple[str, str], ...]  # (<Text name>, task data key), in config order
    ner: NERConfig | None  # the pre-annotated <Labels> and <Choices> groups
    left_to_humans: tuple[str, ...] = ()  # e.g. '<TextArea name="x">'
    why_left: str = ""  # why those controls are not pre-annotated

    @property
    def value_keys(self) -> tuple[str, ...]:
        return tuple(key for _, key in self.texts)

    @property
    def prelabeled(self) -> NERConfig | None:
        """The groups the backend pre-annotates, if any."""
        return self.ner


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


def _ner_groups(ctls: list, value_key: str) -> NERConfig:
    """Several <Labels> groups on one <Text>: one prompt with every group's labels."""
    found = [(c.name, _values(c, "Label")) for c in ctls]
    seen: dict[str, int] = {}
    for _, (names, _) in found:
        for v in names:
            seen[v] = seen.get(v, 0) + 1
    groups, hints = [], []
    for name, (names, descriptions) in found:
        for v in names:
            groups.append((f"{name}: {v}" if seen[v] > 1 else v, name, v))
        hints += [(f"{name}: {v}" if seen[v] > 1 else v, d) for v, d in descriptions]
    labels = tuple(g[0] for g in groups)
    return NERConfig(
        ctls[0].name, ctls[0].to_name[0], value_key, labels, tuple(hints), tuple(groups)
    )


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
    # A perRegion <Choices> answers about a region, not about the text: left to annotators.
    choices = [c for c in controls if c.tag == "Choices" and not _per_region(c)]
    ner, why = None, ""
    if len(texts) > 1:
        why = f"the config has {len(texts)} <Text> objects; pre-annotation needs exactly one"
    elif labels or choices:
        ner = _groups(labels, [_choices(c) for c in choices], texts[0][1])
    done = {g.name for g in labels} | {c.name for c in choices} if ner else set()
    left = tuple(f'<{c.tag} name="{c.name}">' for c in controls if c.name not in done)
    if ET.fromstring(xml).find(".//Relations") is not None:
        left += ("<Relations>",)
    if left and not why:
        why = "ALLabel pre-annotates the <Labels> and <Choices> groups of one <Text>"
    return TextConfig(texts, ner, left, why if left else "")


def _per_region(ctl) -> bool:
    return str(ctl.attr.get("perRegion", "")).lower() == "true"


def _groups(labels: list, choices: list[ChoicesConfig], value_key: str) -> NERConfig:
    """Every <Labels> and <Choices> group of the one <Text>, answered in one call."""
    if len(labels) > 1:
        ner = _ner_groups(labels, value_key)
    elif labels:
        ner = _ner(labels[0], value_key)
    else:
        ner = NERConfig(choices[0].from_name, choices[0].to_name, value_key, ())
    return replace(ner, choices=tuple(choices))


def config_warning(cfg: TextConfig) -> str | None:
    """What annotators must do themselves, in one line (``/status`` warnings and the log)."""
    if not cfg.left_to_humans:
        return None
    done = ""
    if cfg.ner is not None:
        names = sorted({g[1] for g in cfg.ner.groups}) or (
            [cfg.ner.from_name] if cfg.ner.labels else []
        )
        shown = [f'<Labels name="{n}">' for n in names]
        shown += [f'<Choices name="{c.from_name}">' for c in cfg.ner.choices]
        done = f"{', '.join(shown)} {'are' if len(shown) > 1 else 'is'} pre-annotated; "
    return (
        f"{done}{', '.join(cfg.left_to_humans)} left to annotators ({cfg.why_left}); "
        "the queue follows the ALLabel order for every control"
    )
