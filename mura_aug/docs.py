"""`python -m mura_aug.docs`: rewrite the parameter tables in docs/ from the stages' settings (contributors).

Each stage page carries its settings table between the markers of `mura_aug.settings` (TABLE_START with the
class name, TABLE_END). The table is `<Settings>.markdown_table()`, so a default, unit or help text changed
in a settings class reaches the docs by running this; tests/test_settings_docs.py fails until then.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List, Tuple, Type

from mura_aug.errors import UserError
from mura_aug.settings import StageSettings, replace_table

DOCS = Path(__file__).resolve().parent.parent / "docs"  # a checkout's docs/ (not part of an installed package)


def settings_pages() -> List[Tuple[Type[StageSettings], Path]]:
    """(settings class, the docs page that shows its table) for every stage."""
    from mura_aug.evaluate.settings import EvalSettings
    from mura_aug.gan.settings import RunSettings
    from mura_aug.prepare.settings import PrepareSettings
    from mura_aug.synth.settings import SynthSettings

    return [(PrepareSettings, DOCS / "stage_01_prepare.md"), (RunSettings, DOCS / "stage_02_04_train.md"),
            (SynthSettings, DOCS / "stage_05_synth.md"), (EvalSettings, DOCS / "stage_06_evaluate.md")]


def updated_pages() -> Dict[Path, str]:
    """{page: its text with every settings table made afresh} (only pages whose text changes)."""
    changed = {}
    for cls, page in settings_pages():
        if not page.is_file():
            raise UserError(f"The docs page {page} is missing.", "Run this from a checkout of the repository.")
        text = changed.get(page, page.read_text(encoding="utf-8"))
        new = replace_table(text, cls.__name__, cls.markdown_table())
        if new != page.read_text(encoding="utf-8"):
            changed[page] = new
    return changed


def main() -> int:
    try:
        changed = updated_pages()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for page, text in changed.items():
        page.write_text(text, encoding="utf-8")
        print(f"rewrote the settings table(s) in {page}")
    if not changed:
        print("every settings table in docs/ is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
