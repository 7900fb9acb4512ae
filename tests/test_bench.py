"""veil bench: one protocol for every method; an earlier bench is refused or resumed, never silently replaced."""

import json

import pytest

import veil
from veil import bench


def test_bench_refuses_an_earlier_bench_or_resumes_it(tmp_path):
    protocol = {"model": "tiny", "seeds": [0], "num_inference_steps": 1, "guidance_scale": 3.0, "attacks": []}
    row = {"method": "esd", "concept": "circle", "target_rate": 0.0}
    (tmp_path / "bench.json").write_text(json.dumps({**protocol, "rows": [row]}))
    with pytest.raises(veil.VeilError, match="--resume"):
        bench._finished_rows(str(tmp_path), protocol, resume=False)
    assert bench._finished_rows(str(tmp_path), protocol, resume=True) == {("esd", "circle"): row}
    with pytest.raises(veil.VeilError, match="seeds"):
        bench._finished_rows(str(tmp_path), {**protocol, "seeds": [0, 1]}, resume=True)
