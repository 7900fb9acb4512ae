"""veil bench: one protocol for every method; an earlier bench is refused or resumed, never silently replaced."""

import json

import pytest
import torch

import veil
from veil import bench

pytestmark = pytest.mark.usefixtures("world1")  # the bench's bookkeeping, with stand-in scorers (world 2's: its own tests)


def test_bench_refuses_an_earlier_bench_or_resumes_it(tmp_path):
    protocol = {"model": "tiny", "seeds": [0], "num_inference_steps": 1, "guidance_scale": 3.0}
    row = {"method": "esd", "concept": "circle", "target_rate": 0.0}
    (tmp_path / "bench.json").write_text(json.dumps({**protocol, "rows": [row]}))
    with pytest.raises(veil.VeilError, match="--resume"):
        bench._finished_rows(str(tmp_path), protocol, resume=False)
    assert bench._finished_rows(str(tmp_path), protocol, resume=True)[0] == {("esd", "circle"): row}
    with pytest.raises(veil.VeilError, match="seeds"):
        bench._finished_rows(str(tmp_path), {**protocol, "seeds": [0, 1]}, resume=True)


def _row(method, concept, **extra):
    """A bench row as run_bench writes it (rates and costs zero)."""
    fields = ["base_target_rate", "target_rate", "base_synonym_rate", "synonym_rate", "base_paraphrase_rate", "paraphrase_rate",
              "base_short_rate", "short_rate", "nontarget_share", "nontarget_min_share", "other_kinds_share", "seconds", "peak_mem_mb", "artifact_mb"]
    return {"method": method, "concept": concept, **dict.fromkeys(fields, 0.0), **extra}


def test_resume_attacks_the_kept_rows_saved_artifacts_without_refitting(tiny_pipe, tmp_path, monkeypatch):
    from veil.methods.esd import ESD

    method = ESD(concepts=["circle"], max_train_steps=1, ddim_steps=2, samples_per_trajectory=1)
    veil.fit(method, tiny_pipe, progress=False)
    veil.Artifact.from_method(method, tiny_pipe).save(str(tmp_path / "artifacts" / "esd-circle"))
    method.detach(tiny_pipe)
    before = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    protocol = {"model": "tiny", "seeds": [0], "num_inference_steps": 1, "guidance_scale": 3.0}
    rows = [_row("esd", "circle", artifact="artifacts/esd-circle"),
            _row("uce", "square")]  # outside this run: kept as it is
    (tmp_path / "bench.json").write_text(json.dumps({**protocol, "attacks": [], "rows": rows}))

    def no_fit(*args, **kwargs):
        raise AssertionError("a kept row was fitted again")

    calls = []

    def fake_attacks(method, pipe, concept, attacks, *args):
        calls.append((method.name, method.attached_to is pipe, concept, list(attacks)))
        return {"concept": concept, "seeds": [0], "before": 0.0, "attacks": {a: {"attack_success_rate": 0.5} for a in attacks}}

    empty = {"rates": {}, "kinds": {}, "counts": {}, "images": [], "labels": {}}
    monkeypatch.setattr(bench, "fit", no_fit)
    monkeypatch.setattr(bench, "_evaluate", lambda *args: empty)
    monkeypatch.setattr(bench, "_attack_rows", fake_attacks)
    run = dict(classify=None, seeds=(0,), num_inference_steps=1, resume=True, progress=False, log=lambda m: None)
    report = bench.run_bench(tiny_pipe, ["esd"], ["circle"], str(tmp_path), attacks=("prompt_search",), **run)

    assert calls == [("esd", True, "circle", ["prompt_search"])]
    assert [(r["method"], r["concept"]) for r in report["rows"]] == [("esd", "circle"), ("uce", "square")]
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["attacks"] == ["prompt_search"]
    assert saved["rows"][0]["attacks"]["attacks"]["prompt_search"]["attack_success_rate"] == 0.5
    assert all(torch.equal(v, before[k]) for k, v in tiny_pipe.unet.state_dict().items())  # detached again

    # A second attack adds to the row; one it already has is not run again.
    bench.run_bench(tiny_pipe, ["esd"], ["circle"], str(tmp_path), attacks=("prompt_search", "concept_inversion"), **run)
    assert calls[1:] == [("esd", True, "circle", ["concept_inversion"])]
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert set(saved["rows"][0]["attacks"]["attacks"]) == {"prompt_search", "concept_inversion"}
    assert saved["attacks"] == ["concept_inversion", "prompt_search"]


def test_resume_keeps_the_base_pass_only_when_it_drew_the_same_rows(tiny_pipe, tmp_path, monkeypatch):
    protocol = {"model": "tiny", "seeds": [0], "num_inference_steps": 1, "guidance_scale": 3.0}
    (tmp_path / "bench.json").write_text(json.dumps({**protocol, "rows": []}))  # an earlier bench without the digest
    drawn, logs = [], []

    def fake_evaluate(pipe, rows, *args):
        drawn.append(len(rows))
        return {"rates": {"circle": 0.5}, "kinds": {}, "counts": {}, "images": [None] * len(rows), "labels": {}}

    monkeypatch.setattr(bench, "_evaluate", fake_evaluate)
    run = dict(classify=None, seeds=(0,), num_inference_steps=1, resume=True, progress=False, log=logs.append)
    bench.run_bench(tiny_pipe, [], ["circle"], str(tmp_path), **run)
    assert len(drawn) == len(bench.SETS) and sum(drawn) > 0  # no digest: the base is drawn
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert len(saved["base_rows_sha256"]) == 64 and saved["base"]["canonical"]["rates"] == {"circle": 0.5}

    drawn.clear()
    bench.run_bench(tiny_pipe, [], ["circle"], str(tmp_path), **run)
    assert drawn == [] and any("kept from the earlier run" in line for line in logs)
    assert json.loads((tmp_path / "bench.json").read_text())["base"] == saved["base"]

    saved["base_rows_sha256"] = "0" * 64  # other prompts or seeds: drawn again
    (tmp_path / "bench.json").write_text(json.dumps(saved))
    bench.run_bench(tiny_pipe, [], ["circle"], str(tmp_path), **run)
    assert len(drawn) == len(bench.SETS)


def test_resume_measures_short_prompts_on_a_kept_row_that_predates_them(tiny_pipe, tmp_path, monkeypatch):
    from veil.methods.esd import ESD

    method = ESD(concepts=["circle"], max_train_steps=1, ddim_steps=2, samples_per_trajectory=1, learning_rate=1e-2)
    veil.fit(method, tiny_pipe, progress=False)
    veil.Artifact.from_method(method, tiny_pipe).save(str(tmp_path / "artifacts" / "esd-circle"))
    method.detach(tiny_pipe)
    before = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    protocol = {"model": "tiny", "seeds": [0], "num_inference_steps": 1, "guidance_scale": 3.0}
    old = _row("esd", "circle", artifact="artifacts/esd-circle")
    del old["short_rate"], old["base_short_rate"]
    (tmp_path / "bench.json").write_text(json.dumps({**protocol, "rows": [old]}))
    calls = []

    def fake_evaluate(pipe, rows, *args):
        edited = any(not torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())
        calls.append(([r["prompt"] for r in rows], edited))
        return {"rates": {"circle": 0.25 if edited else 1.0}, "kinds": {}, "counts": {}, "images": [], "labels": {}}

    monkeypatch.setattr(bench, "fit", lambda *a, **k: pytest.fail("a kept row was fitted again"))
    monkeypatch.setattr(bench, "_evaluate", fake_evaluate)
    run = dict(classify=None, seeds=(0,), num_inference_steps=1, resume=True, progress=False, log=lambda m: None)
    bench.run_bench(tiny_pipe, ["esd"], ["circle"], str(tmp_path), **run)
    prompts, edited = calls[-1]
    assert edited and {"circle", "a circle", "a red circle", "a circle on a dotted background"} <= set(prompts)
    assert all("circle" in p for p in prompts)  # only the rows naming the row's concept
    saved = json.loads((tmp_path / "bench.json").read_text())["rows"][0]
    assert saved["short_rate"] == 0.25 and saved["base_short_rate"] == 1.0
    assert all(torch.equal(v, before[k]) for k, v in tiny_pipe.unet.state_dict().items())  # detached again

    calls.clear()  # measured once: a later resume keeps it
    bench.run_bench(tiny_pipe, ["esd"], ["circle"], str(tmp_path), **run)
    assert all(edited is False for _, edited in calls)

    # Without its artifact (a fresh clone: artifacts are not in git) the row is kept as it was, without error.
    (tmp_path / "bench.json").write_text(json.dumps({**protocol, "rows": [dict(old, artifact="artifacts/gone")]}))
    bench.run_bench(tiny_pipe, ["esd"], ["circle"], str(tmp_path), **run)
    assert "short_rate" not in json.loads((tmp_path / "bench.json").read_text())["rows"][0]


def test_resume_refuses_to_attack_a_row_without_its_artifact(tiny_pipe, tmp_path, monkeypatch):
    protocol = {"model": "tiny", "seeds": [0], "num_inference_steps": 1, "guidance_scale": 3.0}
    rows = [_row("esd", "circle", artifact="artifacts/esd-circle")]
    (tmp_path / "bench.json").write_text(json.dumps({**protocol, "rows": rows}))
    empty = {"rates": {}, "kinds": {}, "counts": {}, "images": [], "labels": {}}
    monkeypatch.setattr(bench, "_evaluate", lambda *args: empty)
    with pytest.raises(veil.VeilError, match="no saved artifact"):
        bench.run_bench(tiny_pipe, ["esd"], ["circle"], str(tmp_path), classify=None, seeds=(0,), num_inference_steps=1,
                        attacks=("prompt_search",), resume=True, progress=False, log=lambda m: None)


def test_resume_draws_the_forging_curve_of_a_kept_keyed_row_from_its_key_file(tiny_pipe, tmp_path, monkeypatch):
    from veil.methods.kpop.keys import save_key
    from veil.methods.kpop import KPOP

    method = KPOP(concepts=["circle"], max_train_steps=1, ddim_steps=2, samples_per_trajectory=1, num_key_tokens=2)
    veil.fit(method, tiny_pipe, progress=False)
    artifact = veil.Artifact.from_method(method, tiny_pipe)
    artifact.save(str(tmp_path / "artifacts" / "kpop-circle"))
    save_key(method.key, str(tmp_path / "artifacts" / "kpop-circle.veilkey"), artifact=artifact)
    fingerprint = method.key.fingerprints()
    method.detach(tiny_pipe)
    protocol = {"model": "tiny", "seeds": [0], "num_inference_steps": 1, "guidance_scale": 3.0}
    (tmp_path / "bench.json").write_text(json.dumps({**protocol, "rows": [_row("kpop", "circle", artifact="artifacts/kpop-circle")]}))
    keys = []
    empty = {"rates": {}, "kinds": {}, "counts": {}, "images": [], "labels": {}}
    monkeypatch.setattr(bench, "_evaluate", lambda *args: empty)
    monkeypatch.setattr(bench, "_attack_rows", lambda method, pipe, concept, attacks, *a: {
        "concept": concept, "seeds": [0], "before": 0.0, "attacks": {n: {"attack_success_rate": 0.0} for n in attacks}})
    monkeypatch.setattr(bench, "_forging_curve", lambda method, pipe, concept, key, *a: keys.append(key) or {"steps_to_half": 5})
    bench.run_bench(tiny_pipe, ["kpop"], ["circle"], str(tmp_path), classify=None, seeds=(0,), num_inference_steps=1,
                    attacks=("key_forging",), resume=True, progress=False, log=lambda m: None)
    assert [k.fingerprints() for k in keys] == [fingerprint]  # the row's own key, read from its file
    saved = json.loads((tmp_path / "bench.json").read_text())["rows"][0]
    assert saved["forging_curve"] == {"steps_to_half": 5} and "key_forging" in saved["attacks"]["attacks"]


def test_a_keyed_row_keeps_its_key_beside_the_artifact_and_not_in_it(tiny_pipe, tmp_path, monkeypatch):
    from veil.methods.kpop.keys import load_key_for

    monkeypatch.setattr(bench, "_evaluate", lambda pipe, rows, *args: {"rates": {}, "kinds": {}, "images": [None] * len(rows)})
    monkeypatch.setattr(bench, "labelled_grid", lambda rows, labels: type("G", (), {"save": lambda self, path: None})())
    overrides = {"kpop": {"max_train_steps": 1, "ddim_steps": 2, "samples_per_trajectory": 1, "num_key_tokens": 2}}
    bench.run_bench(tiny_pipe, ["kpop"], ["circle"], str(tmp_path), classify=None, seeds=(0,), num_inference_steps=1,
                    overrides=overrides, progress=False, log=lambda m: None)
    folder = tmp_path / "artifacts" / "kpop-circle"
    key = load_key_for(str(folder) + ".veilkey", str(folder))
    secret = key["circle"][0].numpy().tobytes()
    assert all(secret not in path.read_bytes() for path in tmp_path.rglob("*") if path.is_file() and path.suffix != ".veilkey")


def test_a_second_bench_in_the_same_folder_is_refused_and_a_killed_ones_lock_is_not(tiny_pipe, tmp_path, monkeypatch):
    import fcntl
    import os

    (tmp_path / "bench.lock").write_text("12345")  # left by a bench that was killed: no one holds it
    monkeypatch.setattr(bench, "_evaluate", lambda *args: {"rates": {}, "kinds": {}, "counts": {}, "images": [], "labels": {}})
    bench.run_bench(tiny_pipe, [], ["circle"], str(tmp_path), classify=None, progress=False, log=lambda m: None)
    assert (tmp_path / "bench.json").is_file() and not (tmp_path / "bench.lock").exists()  # a bench that ends removes it

    (tmp_path / "bench.lock").write_text("")

    holder = os.open(tmp_path / "bench.lock", os.O_RDWR)  # a bench running now
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(veil.VeilError, match="Another bench is writing"):
            bench.run_bench(tiny_pipe, [], ["circle"], str(tmp_path), classify=None, resume=True, progress=False,
                            log=lambda m: None)
    finally:
        os.close(holder)
