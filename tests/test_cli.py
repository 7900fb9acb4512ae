"""The command line: end to end on the tiny model, and every bad input answered in one sentence."""

import json

import pytest

from veil.cli.main import main


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_sentence_error(code, err, *fragments):
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def erased(tmp_path, capsys):
    out = tmp_path / "erased"
    code, stdout, err = run_cli(capsys, "erase", "--method", "esd", "--concept", "circle", "--model", "tiny", "--steps", "2",
                                "--set", "ddim_steps=6", "--out", out)
    assert code == 0, err
    assert "artifact written" in stdout
    return out


def test_erase_then_generate_grid(tmp_path, capsys, erased):
    manifest = json.loads((erased / "veil.json").read_text())
    assert manifest["method"] == "esd" and manifest["concepts"] == ["circle"]
    assert manifest["config"]["ddim_steps"] == 6 and manifest["cost"]["steps"] == 2
    assert not (tmp_path / "erased.work").exists()  # checkpoints are cleaned up after success
    grid = tmp_path / "grid.png"
    code, stdout, err = run_cli(capsys, "generate", "--model", "tiny", "--artifact", erased, "--prompt", "a circle",
                                "--seeds", "0,1", "--num-inference-steps", "2", "--out", grid)
    assert code == 0, err
    from PIL import Image

    image = Image.open(grid)
    assert image.width > 2 * 96 and image.height >= 2 * 96  # two rows (original, esd) of two seeds


def test_demo_writes_the_public_artifact_key_grid_and_rates_and_keeps_them(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, err = run_cli(capsys, "demo", "--model", "tiny", "--steps", "1", "--out", out)
    assert code == 0, err
    assert (out / "public" / "veil.json").is_file() and (out / "key" / "circle.veilkey").is_file() and (out / "grid.png").is_file()
    rates = json.loads((out / "rates.json").read_text())["rates"]
    assert set(rates) == {"original", "hidden", "unlocked"}
    assert all(set(r) == {"circle", "square", "circle, short"} for r in rates.values())
    assert [line.split()[0] for line in stdout.splitlines() if line.strip().startswith(("original", "hidden", "unlocked"))] == [
        "original", "hidden", "unlocked"]
    before = (out / "rates.json").read_bytes()
    code, _, err = run_cli(capsys, "demo", "--model", "tiny", "--steps", "1", "--out", out)
    assert_one_sentence_error(code, err, "--overwrite")
    assert (out / "rates.json").read_bytes() == before


def test_ls_and_env(capsys):
    code, out, _ = run_cli(capsys, "ls", "methods")
    names = [line.split()[0] for line in out.strip().splitlines()]
    assert code == 0 and {"esd", "uce", "sld", "kpop"} <= set(names)
    code, out, _ = run_cli(capsys, "env")
    assert code == 0 and "diffusers" in out and "torch" in out


def test_unknown_method_suggests_the_closest(tmp_path, capsys):
    code, _, err = run_cli(capsys, "erase", "--method", "esdd", "--concept", "circle", "--model", "tiny", "--out", tmp_path / "x")
    assert_one_sentence_error(code, err, "Unknown method 'esdd'", "Did you mean 'esd'?")
    assert not (tmp_path / "x").exists()


def test_empty_concept(tmp_path, capsys):
    code, _, err = run_cli(capsys, "erase", "--concept", "  ", "--model", "tiny", "--out", tmp_path / "x")
    assert_one_sentence_error(code, err, "concept is empty")


def test_missing_model_path(tmp_path, capsys):
    code, _, err = run_cli(capsys, "erase", "--concept", "circle", "--model", tmp_path / "nope", "--out", tmp_path / "x")
    assert_one_sentence_error(code, err, "nope")


def test_folder_without_pipeline(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "erase", "--concept", "circle", "--model", tmp_path / "empty", "--out", tmp_path / "x")
    assert_one_sentence_error(code, err, "model_index.json")


def test_hub_id_offline_says_how_to_use_a_local_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(capsys, "erase", "--concept", "circle", "--model", "someorg/some-model", "--out", tmp_path / "x")
    assert_one_sentence_error(code, err, "local folder")


@pytest.mark.parametrize("flag,value", [("--steps", "-5"), ("--steps", "0"), ("--lr", "0"), ("--lr", "-1e-4"), ("--lr", "nan")])
def test_bad_numbers(tmp_path, capsys, flag, value):
    code, _, err = run_cli(capsys, "erase", "--concept", "circle", "--model", "tiny", f"{flag}={value}", "--out", tmp_path / "x")
    assert code == 2
    assert_one_sentence_error(code, err, f"argument {flag}", "greater than 0")
    assert not (tmp_path / "x").exists()


def test_unknown_setting(tmp_path, capsys):
    code, _, err = run_cli(capsys, "erase", "--concept", "circle", "--model", "tiny", "--set", "colour=red", "--out", tmp_path / "x")
    assert_one_sentence_error(code, err, "no setting 'colour'")


def test_existing_output_is_refused_and_kept(tmp_path, capsys, erased):
    before = (erased / "model.safetensors").read_bytes()
    code, _, err = run_cli(capsys, "erase", "--concept", "square", "--model", "tiny", "--steps", "1", "--out", erased)
    assert_one_sentence_error(code, err, "already exists", "--overwrite")
    assert (erased / "model.safetensors").read_bytes() == before
    code, _, err = run_cli(capsys, "erase", "--concept", "square", "--model", "tiny", "--steps", "1",
                           "--set", "ddim_steps=4", "--out", erased, "--overwrite")
    assert code == 0, err
    assert json.loads((erased / "veil.json").read_text())["concepts"] == ["square"]


def test_artifact_for_another_base_model(tmp_path, capsys, erased, monkeypatch):
    import veil.models

    original = veil.models.build_tiny_pipeline
    monkeypatch.setattr(veil.models, "build_tiny_pipeline", lambda seed=0: original(seed=7))
    code, _, err = run_cli(capsys, "generate", "--model", "tiny", "--artifact", erased, "--out", tmp_path / "g.png")
    assert_one_sentence_error(code, err, "made for base model")
    assert not (tmp_path / "g.png").exists()


def test_corrupted_artifact(tmp_path, capsys, erased):
    weights = erased / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: len(weights.read_bytes()) // 2])
    code, _, err = run_cli(capsys, "generate", "--model", "tiny", "--artifact", erased, "--out", tmp_path / "g.png")
    assert_one_sentence_error(code, err, "corrupted or truncated")


def test_unknown_format_version(tmp_path, capsys, erased):
    manifest = json.loads((erased / "veil.json").read_text())
    manifest["format_version"] = 7
    (erased / "veil.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(capsys, "generate", "--model", "tiny", "--artifact", erased, "--out", tmp_path / "g.png")
    assert_one_sentence_error(code, err, "format version 7")


def test_long_prompt_is_truncated_with_a_warning(tmp_path, capsys):
    long_prompt = " ".join(["a very red circle"] * 20)
    code, out, err = run_cli(capsys, "generate", "--model", "tiny", "--prompt", long_prompt, "--seeds", "0",
                             "--num-inference-steps", "1", "--out", tmp_path / "g.png")
    assert code == 0, err
    assert "warning" in out and "reads the first 16" in out
    assert (tmp_path / "g.png").exists()
