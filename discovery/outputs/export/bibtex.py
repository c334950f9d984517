"""BibTeX: the citations of the data's source papers, as the task file records them."""
from __future__ import annotations

from discovery.outputs.record import LawRecord


def render(record: LawRecord) -> str:
    task = record.task
    lines = [f"% Data of Kepler task {task.name}: {task.paper}"]
    lines += [f"% source {s.file}: {s.url} (sha256 {s.sha256})" for s in task.sources]
    return "\n".join(lines) + "\n\n" + task.citation.strip() + "\n"
