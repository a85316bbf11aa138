"""bench/results_file.py: a bench script's rerun replaces its measured table and keeps the readings written by
hand under "## " headings, once, between the table and what the script writes below them."""
from bench_scripts import load_bench_script


def _results_file():
    return load_bench_script("results_file")


def test_a_rerun_replaces_the_table_and_keeps_the_readings_once(tmp_path):
    results_file = _results_file()
    path = tmp_path / "results" / "speed.md"
    results_file.write_keeping_readings(path, "# Speed\n\n| a | 1 |")
    assert path.read_text() == "# Speed\n\n| a | 1 |\n"  # nothing written by hand yet: nothing kept
    path.write_text(path.read_text() + "\n## Reading (by hand)\n- the 1 was noisy\n")
    for figure in (2, 3):
        results_file.write_keeping_readings(path, f"# Speed\n\n| a | {figure} |")
    text = path.read_text()
    assert "| a | 1 |" not in text and "| a | 2 |" not in text and "| a | 3 |" in text
    assert text.count("## Reading (by hand)\n- the 1 was noisy") == 1
    assert text.index("| a | 3 |") < text.index("## Reading")


def test_what_the_script_writes_below_the_readings_is_replaced_not_kept(tmp_path):
    results_file = _results_file()
    path = tmp_path / "scale.md"
    path.write_text("# Scale\n\n| old |\n\n## Findings\n* by hand\n\nRaw: [1]\n")
    results_file.write_keeping_readings(path, "# Scale\n\n| new |", tail="Raw: [2]", tail_starts="\nRaw: ")
    assert path.read_text() == "# Scale\n\n| new |\n\n## Findings\n* by hand\n\nRaw: [2]\n"
    assert results_file.hand_written_sections(tmp_path / "missing.md") == ""
