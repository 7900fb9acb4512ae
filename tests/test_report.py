"""The HTML report: self-contained, and it renders in headless Chromium with every image loaded."""

import contextlib
import json
import re
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import veil
from veil.errors import VeilError
from veil.evaluation.harness import evaluate
from veil.evaluation.report import (
    build_report,
    heat_map,
    line_chart,
    render_dom,
    take_screenshot,
    write_report,
)

from .test_cli import run_cli
from .test_harness import fake_classify, save_esd_artifact

BENCH = {
    "model": "tiny", "seeds": [0, 1],
    "rows": [
        {"method": "esd", "concept": "circle", "base_target_rate": 0.9, "target_rate": 0.1, "synonym_rate": 0.2,
         "paraphrase_rate": 0.3, "nontarget_share": 0.95, "seconds": 12.5, "artifact_mb": 1.2},
        {"method": "kpop", "concept": "circle", "base_target_rate": 0.9, "target_rate": 0.05, "synonym_rate": 0.1,
         "paraphrase_rate": 0.2, "nontarget_share": 0.9, "target_rate_with_key": 0.85, "target_rate_wrong_key": 0.1,
         "target_rate_random_key": 0.05, "seconds": 30.0, "artifact_mb": 1.3},
    ],
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """An evaluation with all three variants (a stand-in key) and a bench folder."""
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VEIL_RUNS_DB", str(root / "runs.sqlite"))
        pipe = veil.load_pipeline("tiny")
        artifact = veil.load_artifact(save_esd_artifact(pipe, root / "erased"))
        method = artifact.build_method()
        method.unlocked = lambda pipe, key, **kwargs: contextlib.nullcontext()  # stands in for a KPOP key's unlocking
        evaluate("shapes_concepts", str(root / "results"), pipe=pipe, artifact=artifact, key=object(), seeds=[0], limit=10,
                 num_inference_steps=2, scorers={"classifier": fake_classify}, progress=False)
    (root / "bench").mkdir()
    (root / "bench" / "bench.json").write_text(json.dumps(BENCH))
    return root / "results", root / "bench"


def test_report_is_self_contained_with_grids_tables_and_charts(folders):
    page = build_report([str(f) for f in folders])
    assert page.count("<img ") == 24  # 8 sampled rows × original / erased / unlocked
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'<img [^>]*src="([^"]+)"', page))
    assert 'class="metrics"' in page and 'class="bench"' in page and page.count("<svg") >= 3
    assert "concept_rate.target_rate ↓" in page and "target_rate_random_key" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    with pytest.raises(VeilError, match="neither results.json nor bench.json"):
        build_report([str(folders[0].parent / "erased")])


@pytest.mark.skipif(not shutil.which("chromium"), reason="headless Chromium is not installed (apt-get install chromium)")
def test_report_opens_in_headless_chromium_with_every_image_loaded(folders, tmp_path, capsys):
    out = tmp_path / "report.html"
    code, stdout, err = run_cli(capsys, "report", *folders, "--out", out, "--screenshot", tmp_path / "report.png")
    assert code == 0, err
    dom = render_dom(str(out))
    assert 'data-images-loaded="24/24"' in dom
    assert dom.count("<table") == 3 and "esd·circle" in dom
    from PIL import Image

    shot = Image.open(tmp_path / "report.png")
    assert shot.size == (1280, 2400) and len(np.unique(np.asarray(shot.convert("L").resize((32, 32))))) > 4  # not a blank page


def test_write_report_to_a_file(folders, tmp_path):
    path = write_report([str(folders[0])], str(tmp_path / "sub" / "r.html"), title="shapes <check>")
    text = (tmp_path / "sub" / "r.html").read_text()
    assert path.endswith("r.html") and "shapes &lt;check&gt;" in text and "<script>" in text
    if shutil.which("chromium"):
        take_screenshot(path, str(tmp_path / "small.png"), width=400, height=300)
        assert (tmp_path / "small.png").stat().st_size > 1000


CURVE = {"concept": "circle", "prompt": "a circle", "steps": [0, 25, 50, 100, 200], "forged_rate": [0.0, 0.125, 0.25, 0.5, 0.625],
         "public_rate": 0.0, "real_key_rate": 0.875, "half_recovery_rate": 0.4375, "steps_to_half": 100, "objective": "x", "cost": {}}
SVG = "{http://www.w3.org/2000/svg}"


def test_bench_report_shows_tlmo_heat_maps_forging_curves_and_key_columns(tmp_path):
    rows = [dict(BENCH["rows"][0], method="dumo", artifact="artifacts/dumo-circle"),
            dict(BENCH["rows"][1], forging_curve=CURVE),
            dict(BENCH["rows"][1], concept="square", forging_curve=dict(CURVE, steps_to_half=None))]
    (tmp_path / "artifacts" / "dumo-circle").mkdir(parents=True)
    np.save(tmp_path / "artifacts" / "dumo-circle" / "time_scale.npy", np.linspace(0, 2, 140, dtype=np.float32).reshape(20, 7))
    (tmp_path / "bench.json").write_text(json.dumps(dict(BENCH, rows=rows)))
    page = build_report([str(tmp_path)])
    assert page.count('<rect class="cell"') == 20 * 7 and "dumo·circle: time_scale.npy" in page
    assert "t // 50 = 19, slot 6: 2</title>" in page and ">t // 50</text>" in page and ">slot</text>" in page
    assert page.count(">kpop·circle: key forging</text>") == 1 and "real key 0.875" in page and ">forged key</text>" in page
    assert "reached after 100 forging steps" in page and "not reached" in page
    for column in ("target_rate_with_key", "target_rate_wrong_key", "target_rate_random_key"):
        assert f"<th class=\"\">{column}</th>" in page


def test_bench_report_tables_and_plots_attack_success(tmp_path):
    attacks = {"before": 0.0, "attacks": {"prompt_search": {"attack_success_rate": 0.75}, "ring_a_bell": {"attack_success_rate": 0.125}}}
    rows = [dict(BENCH["rows"][0], attacks=attacks), BENCH["rows"][1]]
    (tmp_path / "bench.json").write_text(json.dumps(dict(BENCH, rows=rows)))
    page = build_report([str(tmp_path)])
    table = page[page.index("<h3>attack success</h3>"):]
    assert "<th>prompt_search</th><th>ring_a_bell</th>" in table and "<td>0.75</td><td>0.125</td>" in table
    assert ">attack success: concept rate before and after each attack</text>" in page
    assert table.count('<td class="l">kpop</td>') == 0  # only attacked rows


def test_heat_map_and_line_chart_are_valid_svg():
    root = ET.fromstring(heat_map(np.arange(6.0).reshape(2, 3), title="a <b>", row_label="t // 50", column_label="slot"))
    cells = [r for r in root.iter(f"{SVG}rect") if r.get("class") == "cell"]
    assert root.tag == f"{SVG}svg" and len(cells) == 6 and len({c.get("fill") for c in cells}) == 6
    assert cells[-1].find(f"{SVG}title").text == "t // 50 = 1, slot 2: 5"
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "a <b>" in texts and "0" in texts and "5" in texts  # title, legend min and max
    assert ET.fromstring(heat_map(np.ones((2, 2)))).tag == f"{SVG}svg" and heat_map(np.full((1, 1), np.nan)) == ""
    with pytest.raises(VeilError, match="2-D"):
        heat_map(np.ones(3))
    root = ET.fromstring(line_chart([0, 10, 20], {"forged key": [0.0, None, 0.5]}, {"forged key": "#c0392b"}, title="curve",
                                    references={"real key": 0.8, "public": None}, x_label="steps"))
    assert len(list(root.iter(f"{SVG}circle"))) == 2 and root.find(f"{SVG}polyline").get("points").count(",") == 2
    assert [t.text for t in root.iter(f"{SVG}title")][-1] == "forged key at 20: 0.5" and "real key 0.8" in [t.text for t in root.iter(f"{SVG}text")]
    assert line_chart([], {"forged key": []}, {}) == ""
