"""Every stage's docs page shows the table its settings class makes (`python -m mura_aug.docs` rewrites them)."""
from __future__ import annotations

import pytest

from mura_aug import docs
from mura_aug.settings import TABLE_END, TABLE_START


@pytest.mark.parametrize("cls, page", docs.settings_pages(), ids=lambda value: getattr(value, "__name__", ""))
def test_docs_page_shows_the_settings_table(cls, page):
    text = page.read_text(encoding="utf-8")
    start = TABLE_START.format(name=cls.__name__)
    assert start in text and TABLE_END in text.split(start, 1)[1], f"{page.name} has no {cls.__name__} table"
    shown = text.split(start, 1)[1].split(TABLE_END, 1)[0].strip()
    assert shown == cls.markdown_table(), f"{page.name} is out of date: run python -m mura_aug.docs"


def test_the_docs_command_reports_nothing_to_do_when_up_to_date():
    assert docs.updated_pages() == {}
