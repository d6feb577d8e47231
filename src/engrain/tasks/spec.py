"""Declarative task specs: fields, labels, prompt formats with verbalisers, splits, OOD partners."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from engrain.errors import EngrainError

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class PromptFormat:
    """A pattern and its verbalisers.

    ``template`` names the task's text fields in braces (``{premise} {hypothesis} ?``). It is filled
    by a single substitution pass, so braces inside the data are never interpreted (llmft's
    ``.format`` crashed on them). The prompt ends without trailing space; each verbaliser carries
    its own leading space (" Yes"), so the answer token is the one the model would write next.
    """

    template: str
    verbalizers: dict[str, str]  # label name -> answer text, e.g. {"entailment": " Yes"}

    def placeholders(self) -> list[str]:
        return _PLACEHOLDER.findall(self.template)

    def fill(self, fields: dict[str, str]) -> str:
        return _PLACEHOLDER.sub(lambda m: fields[m.group(1)], self.template)


@dataclass(frozen=True)
class HubSource:
    """Where a split lives on the Hugging Face hub, and how its columns and label ids map to ours."""

    path: str
    config: str | None
    split: str
    columns: dict[str, str]  # our field -> hub column
    labels: tuple[str | None, ...]  # hub label id -> our label name (None: drop the row)
    rows: tuple[int, int] | None = None  # keep rows [start, stop) of the hub split


@dataclass(frozen=True)
class LocalSource:
    """A file under the data folder (the layout of ../shared/data) and how to read it."""

    path: str  # relative to the data folder
    reader: str  # jsonl | json_dict | tsv | tsv_noheader
    columns: dict[str, str]  # our field -> file column ("label" included)
    labels: dict[str, str | None]  # file label value -> our label name (None: drop the row)
    header: tuple[str, ...] = ()  # column names for tsv_noheader


@dataclass(frozen=True)
class Split:
    local: LocalSource
    hub: HubSource | None = None


@dataclass(frozen=True)
class OODPartner:
    """An out-of-domain evaluation set for a task, with a map from the task's labels to the partner's."""

    task: str
    label_map: dict[str, str] | None = None  # None: the label names are shared


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    fields: tuple[str, ...]
    labels: tuple[str, ...]  # index = class id
    splits: dict[str, Split]  # "train" and/or "validation" (your own task: its split names -> None, read by engrain.tasks.user)
    formats: dict[str, PromptFormat]
    default_format: str
    ood: tuple[OODPartner, ...] = ()
    breakdown: tuple[str, ...] = ()  # metadata columns to break accuracy down by (HANS: heuristic)
    meta: tuple[str, ...] = ()  # metadata columns kept from the files
    hub_note: str = ""
    extra: dict = field(default_factory=dict)

    def prompt_format(self, name: str | None = None, template: str | None = None) -> PromptFormat:
        """The named format, or a user's own template with the named format's verbalisers; validated."""
        name = name or self.default_format
        if name not in self.formats:
            from engrain.errors import unknown

            raise unknown(f"format for task {self.name}", name, self.formats)
        fmt = self.formats[name]
        if template is not None:
            fmt = PromptFormat(template.replace("\\n", "\n"), fmt.verbalizers)
        bad = [p for p in fmt.placeholders() if p not in self.fields]
        if bad:
            raise EngrainError(
                f"format placeholder {{{bad[0]}}} is not a field of task {self.name}; "
                f"its fields are {', '.join('{' + f + '}' for f in self.fields)}"
            )
        return fmt
