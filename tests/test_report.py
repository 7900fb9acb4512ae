"""The HTML report: self-contained, and it renders in headless Chromium with every image loaded."""

import contextlib
import json
import re
import shutil

import numpy as np
import pytest

import veil
from veil.errors import VeilError
from veil.evaluation.harness import evaluate
from veil.evaluation.report import build_report, render_dom, take_screenshot, write_report

from .test_cli import run_cli
from .test_harness import fake_classify, save_esd_artifact

BENCH = {
    "model": "tiny", "seeds": [0, 1],
    "rows": [
        {"method": "esd", "concept": "circle", "base_target_rate": 0.9, "target_rate": 0.1, "synonym_rate": 0.2,
         "paraphrase_rate": 0.3, "nontarget_share": 0.95, "seconds": 12.5, "artifact_mb": 1.2},
        {"method": "kpop", "concept": "circle", "base_target_rate": 0.9, "target_rate": 0.05, "synonym_rate": 0.1,
         "paraphrase_rate": 0.2, "nontarget_share": 0.9, "target_rate_right_key": 0.85, "seconds": 30.0, "artifact_mb": 1.3},
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
        method.unlocked = lambda pipe, key: contextlib.nullcontext()  # stands in for a KPOP key's unlocking
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
    assert "concept_rate.target_rate ↓" in page and "target_rate_right_key" in page
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
