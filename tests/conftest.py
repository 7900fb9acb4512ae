import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tempfile  # noqa: E402

# Runs recorded by `veil eval` go to a throwaway database, never the user's.
os.environ.setdefault("VEIL_RUNS_DB", os.path.join(tempfile.mkdtemp(prefix="veil-test-"), "runs.sqlite"))

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def tiny_pipe():
    from veil.models import build_tiny_pipeline

    pipe = build_tiny_pipeline(seed=0)
    pipe.veil_model_name = "tiny"
    return pipe


def render(pipe, prompt="a circle", seed=0, steps=3):
    """A deterministic small generation as a tensor, for bit-for-bit comparisons."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(prompt, num_inference_steps=steps, guidance_scale=3.0, generator=generator, output_type="pt").images


def saved_and_reloaded(method, pipe, folder, original, edited):
    """Save the fitted ``method``'s artifact to ``folder``, detach it (the pipeline draws ``original`` again), then load
    and attach the artifact (it draws ``edited``); returns the attached artifact."""
    import veil

    veil.Artifact.from_method(method, pipe).save(folder)
    method.detach(pipe)
    assert torch.equal(render(pipe), original)
    artifact = veil.load_artifact(folder)
    artifact.attach(pipe)
    assert torch.equal(render(pipe), edited)
    return artifact


def bundle_world(monkeypatch, version):
    """``version`` as the bundled world for this test; a build folder keeps its own."""
    import veil.shapes

    real = veil.shapes.world_version
    monkeypatch.setattr(veil.shapes, "world_version", lambda model="shapes": version if str(model) == "shapes" else real(model))


@pytest.fixture
def world1(monkeypatch):
    """World 1 as the bundled world: for the bench's bookkeeping tests, whose stand-in scorers return rates without
    labels and whose counts are world 1's sets."""
    bundle_world(monkeypatch, 1)


@pytest.fixture
def trained_esd(tiny_pipe):
    import veil

    method = veil.get_method("esd")(concepts=["circle"], max_train_steps=4, learning_rate=1e-3, ddim_steps=10)
    cost = veil.fit(method, tiny_pipe, progress=False)
    return method, cost
