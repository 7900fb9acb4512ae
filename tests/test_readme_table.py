"""The README's methods table is the output of bench/readme_table.py on the committed headline bench."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


readme_table = _load("readme_table")


def _row(method, concept, **fields):
    row = dict(method=method, concept=concept, target_rate=0.0, synonym_rate=0.0, paraphrase_rate=0.0,
               nontarget_shares={"square": 1.0, "dotted": 1.0}, nontarget_min_share=1.0, seconds=12.4)
    row.update(fields)
    return row


def test_readme_holds_the_generated_table_byte_for_byte():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    report = json.loads((ROOT / readme_table.HEADLINE).read_text(encoding="utf-8"))
    assert readme_table.readme_block(readme) == readme_table.table(report), (
        "README.md's methods table is stale: run python bench/readme_table.py --write")


def _cells(block):
    return [[cell.strip() for cell in line.split("|")[1:-1]] for line in block.splitlines() if "---" not in line]


def test_table_has_every_row_of_the_headline_bench_once():
    report = json.loads((ROOT / readme_table.HEADLINE).read_text(encoding="utf-8"))
    blocks = [b for b in readme_table.table(report).split("\n\n") if b.startswith("| ")]
    found = [(cells[0], cells[1]) for cells in _cells(blocks[0])[1:]]
    if len(blocks) > 1:  # world 2: a second table, a line per method and a column per other concept
        head, *lines = _cells(blocks[1])
        columns = [c.split(":")[0] for c in head[1:]]
        found += [(cells[0], column) for cells in lines for column, cell in zip(columns, cells[1:]) if cell != "—"]
    expected = [(readme_table.name_of(r), readme_table.concept_label(r["concept"])) for r in report["rows"]]
    assert sorted(found) == sorted(expected) and len(set(found)) == len(found)


def test_world2_rows_show_objects_seen_and_held_out_and_a_second_table():
    implicit = dict(implicit_rate=0.5, heldout_implicit_rate=0.75, base_implicit_rate=1.0)
    report = {"model": "shapes", "seeds": [0], "num_inference_steps": 20, "guidance_scale": 3.0, "rows": [
        _row("esd", "circle", config={"train_method": "noxattn"}, **implicit),
        _row("uce", "circle", **implicit),
        _row("uce", "hatched", implicit_rate=None, heldout_implicit_rate=None, nontarget_shares={"dotted": 0.5}),
        _row("uce", "circle+square+triangle", **implicit),
    ]}
    lines = readme_table.table(report).splitlines()
    assert lines[2] == "| ESD-u | circle | 0 % | 0 % | 0 % | 50 % / 75 % | 100 % | — | 12 |"
    assert lines[3].startswith("| UCE | circle |") and len(lines[:lines.index("")]) == 4
    assert "| method | hatched: target / lowest other | 3 shapes: target / lowest other |" in lines
    assert "| UCE | 0 % / dotted 50 % | 0 % / 100 % |" in lines
    assert any(line.startswith("Several shapes at once: 3 shapes = circle, square, triangle") for line in lines)


def test_table_reports_rates_the_lowest_other_concept_and_keys():
    report = {"model": "shapes", "seeds": [0, 1], "num_inference_steps": 20, "guidance_scale": 3.0, "rows": [
        _row("esd", "circle", paraphrase_rate=0.0928, nontarget_shares={"square": 1.0, "checkered": 0.8, "blue": 0.95}),
        _row("kpop", "square", target_rate_with_key=1.0, target_rate_random_key=0.0, target_rate_wrong_key=0.1667,
             short_rate=0.0417, seconds=0.04),
    ]}
    lines = readme_table.table(report).splitlines()
    assert lines[2] == "| ESD | circle | 0 % | 0 % | 9.3 % | — | checkered 80 % | — | 12 |"
    assert lines[3] == "| KPOP | square | 0 % | 0 % | 0 % | 4.2 % | 100 % | 100 % / 0 % / 16.7 % | 0.0 |"
    assert "seeds 0, 1, DDIM 20" in lines[5]


def test_rows_from_other_benches_name_their_source():
    report = {"model": "shapes", "seeds": [0], "num_inference_steps": 20, "guidance_scale": 3.0,
              "assembled_by": "python bench/headline_assemble.py",
              "rows": [_row("uce", "circle", source="bench/results/a"), _row("sld", "circle", source="bench/results/a"),
                       _row("kpop", "circle", source="bench/results/b")]}
    assert readme_table.table(report).splitlines()[-1].endswith("UCE, SLD from bench/results/a; KPOP from bench/results/b.")


def test_a_row_without_a_rate_is_refused_in_one_sentence():
    broken = _row("esd", "circle")
    del broken["paraphrase_rate"]
    with pytest.raises(readme_table.TableError, match="lacks the field 'paraphrase_rate'"):
        readme_table.table({"rows": [broken]})
    with pytest.raises(readme_table.TableError, match="no bench rows"):
        readme_table.table({"rows": []})


def test_splice_replaces_only_the_text_between_the_markers():
    readme = f"# title\n\n{readme_table.START}\nold table\n{readme_table.END}\n\nafter\n"
    spliced = readme_table.splice(readme, "| new |\n")
    assert spliced == f"# title\n\n{readme_table.START}\n| new |\n{readme_table.END}\n\nafter\n"
    assert readme_table.readme_block(spliced) == "| new |\n"
    with pytest.raises(readme_table.TableError, match="markers"):
        readme_table.splice(readme.replace(readme_table.END, ""), "| new |\n")


def test_a_missing_bench_exits_2_and_leaves_the_readme_alone(capsys):
    before = (ROOT / "README.md").read_bytes()
    assert readme_table.main(["--bench", "bench/results/no-such-bench/bench.json", "--write"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bench/results/no-such-bench/bench.json does not exist") and err.count("\n") == 1
    assert (ROOT / "README.md").read_bytes() == before


def test_headline_rows_were_made_with_the_current_shapes_presets():
    import veil
    from veil.methods.presets import preset_for

    report = json.loads((ROOT / readme_table.HEADLINE).read_text(encoding="utf-8"))
    for row in report["rows"]:
        preset = preset_for(veil.get_method(row["method"]), "shapes", row.get("concepts") or [row["concept"]])
        preset.update(row.get("overrides", {}))  # a variant the bench asked for (ESD-u: --set esd.train_method=noxattn)
        changed = sorted(k for k, v in preset.items() if row["config"].get(k) != v)
        assert not changed, (f"the headline's {row['method']} {row['concept']} row predates its preset ({', '.join(changed)}): "
                             "run make bench")


def test_readme_is_a_product_page_of_at_most_12000_bytes():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= 12000, f"README.md is {size} bytes; keep it at most 12,000 (move detail into docs/)"
