import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import veil
from veil import _io
from veil.errors import VeilError

from .conftest import render


def test_untrained_attach_is_identity(tiny_pipe):
    before = render(tiny_pipe)
    method = veil.get_method("esd")(concepts=["circle"])
    method.attach(tiny_pipe)
    method.attach(tiny_pipe)  # idempotent
    assert torch.equal(render(tiny_pipe), before)


def test_detach_restores_bit_for_bit(tiny_pipe):
    before = render(tiny_pipe)
    method = veil.get_method("esd")(concepts=["circle"], max_train_steps=3, learning_rate=1e-2, ddim_steps=10)
    veil.fit(method, tiny_pipe, progress=False)
    assert not torch.equal(render(tiny_pipe), before)
    with method.disabled(tiny_pipe):
        assert torch.equal(render(tiny_pipe), before)
    method.detach(tiny_pipe)
    assert torch.equal(render(tiny_pipe), before)


def test_save_load_round_trip(tmp_path, tiny_pipe, trained_esd):
    method, cost = trained_esd
    erased = render(tiny_pipe)
    artifact = veil.Artifact.from_method(method, tiny_pipe, cost={"steps": cost["steps"]})
    artifact.save(tmp_path / "art")
    method.detach(tiny_pipe)

    manifest = json.loads((tmp_path / "art" / "veil.json").read_text())
    assert manifest["format_version"] == 1 and manifest["method"] == "esd"
    assert manifest["base_model"]["fingerprint"] == veil.model_fingerprint(tiny_pipe.unet)
    stored = load_file(tmp_path / "art" / "model.safetensors")
    assert stored and all(k.startswith("unet.") and "attn2" in k for k in stored)  # only changed tensors

    loaded = veil.load_artifact(tmp_path / "art")
    loaded.attach(tiny_pipe)
    assert torch.equal(render(tiny_pipe), erased)
    loaded.detach(tiny_pipe)


def test_save_refuses_existing_folder(tmp_path, tiny_pipe, trained_esd):
    method, _ = trained_esd
    artifact = veil.Artifact.from_method(method, tiny_pipe)
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "keep.txt").write_text("mine")
    with pytest.raises(VeilError, match="already exists"):
        artifact.save(tmp_path / "art")
    assert (tmp_path / "art" / "keep.txt").read_text() == "mine"
    artifact.save(tmp_path / "art", overwrite=True)
    assert not (tmp_path / "art" / "keep.txt").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary leftovers


@pytest.fixture
def saved(tmp_path, tiny_pipe, trained_esd):
    method, _ = trained_esd
    veil.Artifact.from_method(method, tiny_pipe).save(tmp_path / "art")
    method.detach(tiny_pipe)
    return tmp_path / "art"


def test_truncated_weights_are_refused(saved):
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(VeilError, match="corrupted or truncated"):
        veil.load_artifact(saved)


def test_garbage_weights_with_a_matching_checksum_are_refused(saved):
    import hashlib

    garbage = b"\x00\x01garbage"
    manifest = json.loads((saved / "veil.json").read_text())
    manifest["weights_sha256"] = hashlib.sha256(garbage).hexdigest()
    (saved / "veil.json").write_text(json.dumps(manifest))
    (saved / "model.safetensors").write_bytes(garbage)
    with pytest.raises(VeilError, match="not a readable safetensors"):
        veil.load_artifact(saved)


def test_a_manifest_without_its_checksum_is_refused(saved):
    manifest = json.loads((saved / "veil.json").read_text())
    del manifest["weights_sha256"]
    (saved / "veil.json").write_text(json.dumps(manifest))
    with pytest.raises(VeilError, match="lacks the field 'weights_sha256'"):
        veil.load_artifact(saved)


@pytest.mark.parametrize("text,match", [("[1, 2, 3]", "holds a JSON list"), ("{not json", "not readable JSON")])
def test_a_manifest_that_is_no_json_object_is_refused(saved, text, match):
    (saved / "veil.json").write_text(text)
    with pytest.raises(VeilError, match=match):
        veil.load_artifact(saved)


def test_a_file_given_as_the_artifact_is_called_a_file(tmp_path):
    (tmp_path / "afile.txt").write_text("x")
    with pytest.raises(VeilError, match="is a file, not a folder"):
        veil.load_artifact(tmp_path / "afile.txt")


def test_unknown_format_version_is_refused(saved):
    manifest = json.loads((saved / "veil.json").read_text())
    manifest["format_version"] = 99
    (saved / "veil.json").write_text(json.dumps(manifest))
    with pytest.raises(VeilError, match="format version 99"):
        veil.load_artifact(saved)


def test_shape_mismatch_with_manifest_is_refused(saved):
    manifest = json.loads((saved / "veil.json").read_text())
    name = next(iter(manifest["tensors"]))
    manifest["tensors"][name]["shape"] = [1, 2, 3]  # the weights are unchanged: their checksum still matches
    (saved / "veil.json").write_text(json.dumps(manifest))
    with pytest.raises(VeilError, match="shape"):
        veil.load_artifact(saved)


def test_artifact_for_another_base_model_is_refused(saved):
    from veil.models import build_tiny_pipeline

    other = build_tiny_pipeline(seed=1)
    before = render(other)
    with pytest.raises(VeilError, match="made for base model"):
        veil.load_artifact(saved).attach(other)
    assert torch.equal(render(other), before)  # nothing was changed


def test_fingerprint_ignores_float16_storage(tiny_pipe):
    from veil.models import build_tiny_pipeline

    reference = veil.model_fingerprint(build_tiny_pipeline(seed=0).unet)
    half = build_tiny_pipeline(seed=0).unet.to(torch.float16)
    assert veil.model_fingerprint(half) == reference


def test_export_partial_unet_state_dict(tmp_path, saved, tiny_pipe):
    artifact = veil.load_artifact(saved)
    artifact.attach(tiny_pipe)
    erased = render(tiny_pipe)
    artifact.detach(tiny_pipe)
    artifact.export_unet_state_dict(tmp_path / "esd-unet.safetensors")
    result = tiny_pipe.unet.load_state_dict(load_file(tmp_path / "esd-unet.safetensors"), strict=False)
    assert not result.unexpected_keys
    assert torch.equal(render(tiny_pipe), erased)


def test_export_full_pipeline_folder(tmp_path, saved, tiny_pipe):
    original = render(tiny_pipe)
    artifact = veil.load_artifact(saved)
    artifact.attach(tiny_pipe)
    erased = render(tiny_pipe)
    artifact.detach(tiny_pipe)
    artifact.export_pipeline(tiny_pipe, tmp_path / "pipeline")
    assert torch.equal(render(tiny_pipe), original)  # exporting leaves the pipeline as it was
    reloaded = veil.load_pipeline(str(tmp_path / "pipeline"))
    assert torch.equal(render(reloaded), erased)


KILLED_SAVE = """
import os, signal, sys
import veil
from veil import _io

folder, where = sys.argv[1], sys.argv[2]
rename = os.rename

def killed_after_the_first(source, target):
    rename(source, target)
    os.kill(os.getpid(), signal.SIGKILL)  # the old copy is moved aside, the new one not yet in

if where == "between renames":
    _io.os.rename = killed_after_the_first
with _io.atomic_dir(folder, overwrite=True) as tmp:
    open(os.path.join(tmp, "veil.json"), "w").write("{}")
    if where == "while writing":
        os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_save(folder, where):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(veil.__file__)))
    process = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(folder), where], env=env, capture_output=True)
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()[-2000:]


def test_an_overwrite_killed_midway_leaves_the_old_artifact_recoverable_and_no_stale_temporaries(saved):
    """A save over an existing artifact killed between its two renames leaves nothing at the path; the next load (or
    save, or check of the path) puts the old artifact back. Temporaries of killed saves go; a running save's stay."""
    before = sorted(os.listdir(saved))
    _killed_save(saved, "between renames")
    assert not saved.exists()
    assert [p for p in os.listdir(saved.parent) if p.startswith(".art.old-")]
    artifact = veil.load_artifact(saved)  # the next start
    assert sorted(os.listdir(saved)) == before and artifact.method_name == "esd"
    assert not [p for p in os.listdir(saved.parent) if p.startswith(".")]

    _killed_save(saved, "while writing")
    assert [p for p in os.listdir(saved.parent) if p.startswith(".art.tmp-")]
    running = saved.parent / f".art.tmp-{os.getpid()}-live"  # another save, still under way
    running.mkdir()
    with pytest.raises(VeilError, match="already exists"):
        _io.refuse_existing(str(saved), False)  # what every command checks first
    assert [p for p in os.listdir(saved.parent) if p.startswith(".")] == [running.name]
    assert sorted(os.listdir(saved)) == before


def test_an_artifact_that_records_a_timestep_mapping_still_loads(saved, tiny_pipe):
    # Its config names a training-time choice ESD sampling no longer has; the stored weights work as they are.
    manifest = json.loads((saved / "veil.json").read_text())
    manifest["config"]["timestep_mapping"] = "esd"
    (saved / "veil.json").write_text(json.dumps(manifest))
    artifact = veil.load_artifact(saved)
    method = artifact.attach(tiny_pipe)
    assert "timestep_mapping" not in method.config.to_dict()
    edited = dict(tiny_pipe.unet.named_parameters())
    for name, tensor in artifact.tensors.items():
        assert torch.equal(edited[name[len("unet."):]], tensor)
    method.detach(tiny_pipe)
