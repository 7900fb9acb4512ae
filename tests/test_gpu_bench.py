"""bench/gpu.sh --smoke: the GPU bench's code path, on the tiny model and the CPU."""

import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_bench_smoke(tmp_path):
    out = tmp_path / "costs.json"
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu.sh"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {row["row"]: row for row in result["rows"]}
    assert result["smoke"] is True
    for name, steps in (("esd-x", 2), ("kpop", 2), ("dumo", 2)):
        assert rows[name]["steps"] == steps and rows[name]["seconds"] > 0 and rows[name]["peak_mem_mb"] > 0
    assert rows["uce"]["seconds"] > 0
    for name in ("generation: veil generate", "generation: StableDiffusionPipeline"):
        assert rows[name]["images"] == 4 and rows[name]["images_per_second"] > 0
