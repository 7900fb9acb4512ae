"""Bad input across the commands: one sentence, exit status 2, before any model is loaded, nothing written.

A handful of the cases ``bench/bad_inputs.py`` runs, in process so that they take seconds.
"""

import importlib.util
import json
import logging
import os
from pathlib import Path

import pytest
import torch

import veil
from veil.cli.main import main

LONG_CONCEPT = "circle " * 1430  # 10,010 characters


def _bench_script(name):
    """A script of bench/ as a module (bench/ is no package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


snapshot = _bench_script("bad_inputs").snapshot  # the bench's own record of a folder, so both judge data loss alike


@pytest.fixture
def here(tmp_path, monkeypatch):
    """An empty working folder holding a file, a folder with a file, and an earlier evaluation's results."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile.txt").write_text("keep me\n")
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir" / "keep.txt").write_text("keep me\n")
    return tmp_path


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if a command gets as far as loading a model: refusals come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the command loaded a model before refusing its input")

    import veil.cli.common
    import veil.models

    monkeypatch.setattr(veil.cli.common, "load_model", refuse)
    monkeypatch.setattr(veil.models, "load_pipeline", refuse)


def refused(capsys, folder, *argv, fragments=()):
    """Run ``veil argv``; assert a one-sentence refusal (exit 2) that left ``folder`` as it was."""
    before = snapshot(folder)
    code = main([str(a) for a in argv])
    _, err = capsys.readouterr()
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert snapshot(folder) == before
    return lines[0]


@pytest.fixture
def artifact(tmp_path, tiny_pipe):
    method = veil.get_method("uce")(concepts=["circle"])
    veil.fit(method, tiny_pipe)
    veil.Artifact.from_method(method, tiny_pipe).save(tmp_path / "art")
    method.detach(tiny_pipe)
    return tmp_path / "art"


GENERATE = ["generate", "--model", "tiny", "--prompt", "x", "--seeds", "0", "--num-inference-steps", "1"]
ERASE = ["erase", "--method", "esd", "--model", "tiny", "--concept", "circle", "--steps", "1"]
BENCH = ["bench", "--model", "tiny", "--methods", "uce", "--concepts", "circle", "--seeds", "0", "--num-inference-steps", "1"]


@pytest.mark.parametrize("argv,fragment", [
    (ERASE + ["--out", "afile.txt/sub"], "which is a file, not a folder"),
    (ERASE + ["--out", "/proc/veil_x"], "cannot be written"),
    (ERASE + ["--out", "afile.txt"], "is a file, and a folder is written there"),
    (GENERATE + ["--out", "/proc/g.png"], "cannot be written"),
    (GENERATE + ["--out", "adir", "--overwrite"], "is a folder, and a file is written there"),
    (["eval", "--model", "tiny", "--limit", "2", "--out", "/proc/v"], "cannot be written"),
    (["export", "--artifact", "art", "--format", "unet-state-dict", "--model", "tiny", "--out", "afile.txt/x.safetensors"], "is a file"),
    (["report", "run", "--out", "adir"], "is a folder"),
    (["report", "run", "--out", "/proc/r.html"], "cannot be written"),
    (["report", "run", "--out", "afile.txt"], "already exists"),
    (BENCH + ["--out", "afile.txt"], "is a file"),
    (["attack", "--attack", "prompt_search", "--model", "tiny", "--concept", "circle", "--out", "afile.txt/o"], "is a file"),
    (["demo", "--model", "tiny", "--out", "/proc/d"], "cannot be written"),
])
def test_an_unwritable_output_is_refused_before_any_work(here, capsys, no_model, artifact, argv, fragment):
    (here / "run").mkdir()  # report's input: refused on its --out before the folder is read
    refused(capsys, here, *[str(artifact) if a == "art" else a for a in argv], fragments=[fragment])


def test_hide_refuses_an_unwritable_key_before_training_and_names_the_option(here, capsys, no_model):
    hide = ["hide", "--model", "tiny", "--concept", "circle", "--steps", "1", "--out", "pub"]
    refused(capsys, here, *hide, "--key-out", "afile.txt/k.veilkey", fragments=["--key-out", "which is a file"])
    refused(capsys, here, *hide, "--key-out", "/proc/k.veilkey", fragments=["--key-out", "cannot be written"])
    (here / "old.veilkey").write_text("an earlier key")
    refused(capsys, here, *hide, "--key-out", "old.veilkey", fragments=["choose another --key-out", "--overwrite"])


@pytest.mark.parametrize("env", ["/proc/x/r.sqlite", "afile.txt/r.sqlite", "adir"])
def test_an_unusable_runs_database_is_refused(here, capsys, no_model, monkeypatch, env):
    monkeypatch.setenv("VEIL_RUNS_DB", env)
    refused(capsys, here, "runs", fragments=["VEIL_RUNS_DB"])
    refused(capsys, here, "eval", "--model", "tiny", "--limit", "1", "--out", "v", fragments=["VEIL_RUNS_DB"])


@pytest.mark.parametrize("device,fragment", [("bogus", "is not a device"), ("cuda:99", "cuda:99"), ("mps", "mps")])
def test_a_device_this_machine_lacks_is_refused(here, capsys, no_model, device, fragment):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    refused(capsys, here, *ERASE, "--out", "o", "--device", device, fragments=[fragment])
    refused(capsys, here, *GENERATE, "--out", "g.png", "--device", device, fragments=[fragment])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused(here, capsys, no_model):
    refused(capsys, here, *ERASE, "--out", "o", "--device", "cuda", fragments=["needs a CUDA GPU", "--device cpu"])


@pytest.mark.parametrize("argv,fragment", [
    (ERASE + ["--out", "o", "--set", "seed=1e400"], "seed must be a finite number"),
    (ERASE + ["--out", "o", "--set", "seed=-1"], "seed must be a whole number from 0"),
    (ERASE + ["--out", "o", "--set", "learning_rate=nan"], "learning_rate must be a finite number"),
    (ERASE + ["--out", "o", "--set", "ddim_steps=abc"], "ddim_steps must be a number"),
    (ERASE + ["--out", "o", "--seed", "1180591620717411303424"], "argument --seed"),
    (GENERATE + ["--out", "g.png", "--seeds", "1180591620717411303424"], "out of range"),
    (GENERATE + ["--out", "g.png", "--guidance-scale", "nan"], "argument --guidance-scale: takes a finite number"),
    (["attack", "--attack", "prompt_search", "--model", "tiny", "--concept", "circle", "--out", "o", "--lr", "nan"], "argument --lr"),
    (["eval", "--model", "tiny", "--out", "v", "--limit", "-1"], "argument --limit"),
    (["eval", "--model", "tiny", "--out", "v", "--limit", "0"], "argument --limit"),
    (["runs", "--limit", "-1"], "argument --limit"),
])
def test_numbers_out_of_range_are_refused(here, capsys, no_model, argv, fragment):
    refused(capsys, here, *argv, fragments=[fragment])


@pytest.mark.parametrize("limit", [-1, 0])
def test_the_library_refuses_a_limit_below_one(tmp_path, tiny_pipe, limit):
    from veil.evaluation.harness import evaluate

    with pytest.raises(veil.VeilError, match="--limit must be a whole number greater than 0"):
        evaluate("shapes_concepts", str(tmp_path / "v"), pipe=tiny_pipe, limit=limit, record=False)
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize("concept", ["cir\ncle", "cir\x07cle", "cir\tcle"])
def test_a_concept_with_control_characters_is_refused(here, capsys, no_model, concept):
    refused(capsys, here, "erase", "--method", "uce", "--model", "tiny", "--concept", concept, "--out", "o",
            fragments=["control character"])


def test_a_concept_longer_than_the_tokenizer_reads_is_warned_of(here, capsys):
    code = main(["erase", "--method", "uce", "--model", "tiny", "--concept", LONG_CONCEPT, "--out", "o"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "warning: the concept 'circle circle" in out and "reads the first 16" in out


def test_a_binary_prompt_file_is_refused(here, capsys, no_model):
    (here / "p.csv").write_bytes(bytes(range(256)) * 8)
    refused(capsys, here, "eval", "--model", "tiny", "--limit", "1", "--prompts", "p.csv", "--out", "v", fragments=["not a UTF-8 CSV"])


def test_an_unknown_target_is_refused_rather_than_scored(here, capsys, no_model):
    refused(capsys, here, "eval", "--model", "tiny", "--limit", "1", "--targets", "hexagon", "--out", "v",
            fragments=["names the target 'hexagon'"])


@pytest.mark.parametrize("argv,fragment", [(["--scorer", "bogus=x"], "no metric scored by 'bogus'"),
                                           (["--scorer", "nudenet=x"], "no metric scored by 'nudenet'"),
                                           (["--reference", "nope"], "has no FID metric")])
def test_a_scorer_or_reference_the_task_would_ignore_is_refused(here, capsys, no_model, argv, fragment):
    refused(capsys, here, "eval", "--model", "tiny", "--limit", "1", "--out", "v", *argv, fragments=[fragment])


def test_a_list_shaped_manifest_is_refused(here, capsys, no_model, artifact):
    (artifact / "veil.json").write_text("[1, 2, 3]\n")
    refused(capsys, here, *GENERATE, "--out", "g.png", "--artifact", artifact, fragments=["holds a JSON list"])


@pytest.mark.parametrize("text,fragment", [("{not json", "not readable JSON"), ("[1, 2]", "holds a JSON list"),
                                           ("{}", "lacks the field 'config'")])
def test_report_and_compare_refuse_a_damaged_results_file(here, capsys, text, fragment):
    (here / "run").mkdir()
    (here / "run" / "results.json").write_text(text)
    refused(capsys, here, "report", "run", "--out", "r.html", fragments=[fragment])
    refused(capsys, here, "compare", "run", "run", fragments=[fragment])


def test_report_refuses_a_results_file_laid_out_otherwise(here, capsys):
    (here / "run").mkdir()
    (here / "run" / "results.json").write_text(json.dumps({"config": 1, "task": 2, "base_model": 3, "metrics": 4}))
    refused(capsys, here, "report", "run", "--out", "r.html", fragments=["is not laid out as veil writes it"])


@pytest.mark.parametrize("text,fragment", [("{not json", "not readable JSON"), ("[]", "holds a JSON list"),
                                           ('{"rows": [1]}', "not laid out as veil bench writes them")])
def test_bench_resume_refuses_a_damaged_bench_file(here, capsys, text, fragment):
    (here / "b").mkdir()
    (here / "b" / "bench.json").write_text(text)
    refused(capsys, here, *BENCH, "--out", "b", "--resume", fragments=[fragment])


@pytest.mark.parametrize("argv,fragment", [
    (["--methods", ""], "--methods is empty"),
    (["--concepts", ","], "--concepts is empty"),
    (["--set", "uce.bogus=1"], "no field 'bogus'"),
    (["--set", "uce.seed=1e400"], "seed must be a finite number"),
    (["--set", "esd.learning_rate=1e-4"], "not in --methods"),
])
def test_bench_refuses_bad_settings_before_loading_the_model(here, capsys, no_model, argv, fragment):
    base = ["bench", "--model", "tiny", "--methods", "uce", "--concepts", "circle", "--out", "b"]
    for flag, value in zip(argv[::2], argv[1::2]):
        if flag in base:
            base[base.index(flag) + 1] = value
        else:
            base += [flag, value]
    refused(capsys, here, *base, fragments=[fragment])


def test_the_nan_guard_advises_resume_only_when_a_checkpoint_exists(tiny_pipe, tmp_path):
    method = veil.get_method("esd")(concepts=["circle"], max_train_steps=3, learning_rate=1e-3, ddim_steps=6)
    method.loss = lambda pipe, batch, phase=None: torch.tensor(float("nan"), requires_grad=True)
    with pytest.raises(veil.TrainingDiverged) as caught:
        veil.fit(method, tiny_pipe, work_dir=str(tmp_path / "work"), progress=False)
    assert "no checkpoint was written yet" in str(caught.value) and "--resume" not in str(caught.value)


def test_transformers_torchvision_notice_is_silenced():
    import veil.models  # noqa: F401  (installs the filter)

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("transformers.utils.import_utils")
    logger.addHandler(handler)
    try:
        logger.warning("`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`.")
        logger.warning("another notice")
    finally:
        logger.removeHandler(handler)
    assert seen == ["another notice"]
