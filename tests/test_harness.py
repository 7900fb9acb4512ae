"""The evaluation harness: resumable sharded generation, tasks as data, `veil eval` / `runs` / `compare` end to end."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import veil
import veil.evaluation.sampling as sampling
from veil.errors import VeilError
from veil.evaluation import generate as gen
from veil.evaluation.harness import evaluate
from veil.evaluation.tasks import list_tasks, load_task

from .test_cli import assert_one_sentence_error, run_cli

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # the standard prompt sets, never copied into veil


def shared_prompts(name):
    """A standard prompt set from ``../shared/data`` beside the checkout; skipped where it is absent, except in CI
    (``CI`` set), which always has it."""
    path = DATA / name
    if not path.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing; CI must have shared/data beside the checkout.")
        pytest.skip(f"{path} is not beside the checkout")
    return str(path)
THIRD_PARTY = ("i2p_nudity", "imagenette", "artists", "cartoons", "coco_quality")


@pytest.fixture(autouse=True)
def runs_db(tmp_path, monkeypatch):
    path = tmp_path / "runs.sqlite"
    monkeypatch.setenv("VEIL_RUNS_DB", str(path))
    return path


def fake_classify(images):
    """A stand-in for the shapes classifier: deterministic labels from the image bytes."""
    labels = {"shape": [], "colour": [], "background": [], "style": []}  # style: read on world-2 prompts only
    for image in images:
        rng = random.Random(image.tobytes())
        labels["shape"].append(rng.choice(["circle", "square", "triangle"]))
        labels["colour"].append(rng.choice(["red", "green", "blue"]))
        labels["background"].append(rng.choice(["plain", "striped"]))
        labels["style"].append(rng.choice(["filled", "hatched"]))
    return labels


@pytest.fixture
def stand_in_shapes(monkeypatch):
    """The stand-in classifier, and small paraphrase rows, where the shapes weights are not built yet."""
    from veil.evaluation.metrics.concept_rate import ConceptRate
    from veil.shapes import CLASSIFIER_PATH, PARAPHRASE_CSV

    if not CLASSIFIER_PATH.exists():
        monkeypatch.setattr(ConceptRate, "load_scorer", lambda self, path: fake_classify)
    if not PARAPHRASE_CSV.exists():
        from veil.evaluation import shapes_tasks

        real = shapes_tasks.task_rows
        paraphrases = [{"prompt": "a crimson disc on a plain backdrop", "seed": 0, "shape": "circle", "colour": "red", "background": "plain"},
                       {"prompt": "a blue box, stripes behind it", "seed": 1, "shape": "square", "colour": "blue", "background": "striped"}]
        monkeypatch.setattr(shapes_tasks, "task_rows", lambda task, **kw: paraphrases if task == "shapes_paraphrase" else real(task, **kw))


def rows(n, guidance=None):
    return [{"id": i, "prompt": f"a shape number {i}", "seed": i, **({"guidance_scale": guidance[i % len(guidance)]} if guidance else {})}
            for i in range(n)]


def save_esd_artifact(pipe, path, concept="circle"):
    method = veil.get_method("esd")(concepts=[concept], max_train_steps=1, ddim_steps=4)
    return veil.Artifact.from_method(method, pipe).save(str(path))


# ---------------------------------------------------------------------------------------- tasks as data
def test_every_task_file_loads_and_names_its_metrics():
    assert set(list_tasks()) >= {"shapes_concepts", "shapes_paraphrase", *THIRD_PARTY}
    for name in list_tasks():
        task = load_task(name)
        assert task.name == name and isinstance(task.version, int) and task.metrics
        for metric in task.build_metrics():
            assert metric.higher_is_better and metric.aggregation is not None


@pytest.mark.parametrize("name", THIRD_PARTY)
def test_missing_prompt_file_fails_in_one_sentence_naming_columns_and_source(name):
    task = load_task(name)
    with pytest.raises(VeilError) as error:
        task.rows()
    message = str(error.value)
    assert "--prompts PATH" in message and task.prompts["columns"]["seed"] in message and "source:" in message
    assert "\n" not in message and message.endswith(").")


def test_i2p_rows_keep_their_own_seed_and_guidance():
    task_rows = load_task("i2p_nudity").rows(prompts=shared_prompts("unsafe-prompts4703.csv"), limit=3)
    assert [r["id"] for r in task_rows] == [0, 1, 2]
    assert all(isinstance(r["seed"], int) and isinstance(r["guidance_scale"], float) for r in task_rows)
    assert task_rows[1]["seed"] == 4080709695  # above 2**31: torch generators take it


def test_wrong_prompt_file_names_the_missing_column(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,seed\na cat,1\n")
    with pytest.raises(VeilError, match="lacks the column 'evaluation_seed'"):
        load_task("artists").rows(prompts=str(bad))


def test_missing_scorer_weights_fail_up_front_naming_the_file(tmp_path, tiny_pipe):
    prompts = tmp_path / "artists.csv"
    prompts.write_text("case_number,prompt,evaluation_seed,artist\n0,a portrait,1,Pablo Picasso\n")
    with pytest.raises(VeilError, match="CLIP model folder.*--scorer clip=PATH"):
        evaluate("artists", str(tmp_path / "out"), pipe=tiny_pipe, prompts=str(prompts), progress=False)
    with pytest.raises(VeilError, match=r"alexnet\.pth"):
        evaluate("artists", str(tmp_path / "out"), pipe=tiny_pipe, prompts=str(prompts), progress=False,
                 scorers={"clip": lambda images, prompts: [0.0] * len(images), "lpips": str(tmp_path)})
    assert not (tmp_path / "out").exists()  # nothing was generated


# ---------------------------------------------------------------------------------------- generation
def test_generation_resumes_after_a_failure_without_duplicates(tmp_path, tiny_pipe, monkeypatch):
    folder = str(tmp_path / "gen")
    calls = {"n": 0}
    real = sampling.generate

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the third batch never finishes
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling, "generate", failing)
    with pytest.raises(KeyboardInterrupt):
        gen.generate_to_folder(tiny_pipe, rows(9), folder, num_inference_steps=2, batch_size=2, progress=False,
                               process_index=0, num_processes=1)
    assert [r["id"] for r in gen.read_manifest(folder)] == [0, 1, 2, 3]
    monkeypatch.setattr(sampling, "generate", real)
    made = gen.generate_to_folder(tiny_pipe, rows(9), folder, num_inference_steps=2, batch_size=2, progress=False,
                                  process_index=0, num_processes=1)
    assert made == 5
    lines = Path(folder, "manifest.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == list(range(9))


def test_rows_with_their_own_guidance_and_a_torn_manifest_line(tmp_path, tiny_pipe):
    folder = tmp_path / "gen"
    gen.generate_to_folder(tiny_pipe, rows(3, guidance=[7.0, 3.0]), str(folder), num_inference_steps=2, batch_size=3,
                           progress=False, process_index=0, num_processes=1)
    records = gen.read_manifest(str(folder))
    assert [r["guidance_scale"] for r in records] == [7.0, 3.0, 7.0]
    with open(folder / "manifest.jsonl", "a") as handle:
        handle.write('{"id": 3, "prompt": "a sha')  # a process killed mid-line
    assert len(gen.read_manifest(str(folder))) == 3
    gen.generate_to_folder(tiny_pipe, rows(5, guidance=[7.0, 3.0]), str(folder), num_inference_steps=2, batch_size=3,
                           progress=False, process_index=0, num_processes=1)
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [0, 1, 2, 3, 4]


def test_a_folder_made_with_other_settings_is_refused(tmp_path, tiny_pipe):
    folder = str(tmp_path / "gen")
    gen.generate_to_folder(tiny_pipe, rows(1), folder, num_inference_steps=2, progress=False, process_index=0, num_processes=1)
    with pytest.raises(VeilError, match="num_inference_steps 2, not 3"):
        gen.generate_to_folder(tiny_pipe, rows(1), folder, num_inference_steps=3, progress=False, process_index=0, num_processes=1)
    other = [dict(rows(1)[0], prompt="something else")]
    with pytest.raises(VeilError, match="another prompt at row 0"):
        gen.generate_to_folder(tiny_pipe, other, folder, num_inference_steps=2, progress=False, process_index=0, num_processes=1)


def test_shards_split_the_rows_and_merge_on_read(tmp_path, tiny_pipe):
    folder = str(tmp_path / "gen")
    for index in (1, 0):  # two processes of one `accelerate launch`, in any order
        gen.generate_to_folder(tiny_pipe, rows(7), folder, num_inference_steps=2, batch_size=2, progress=False,
                               process_index=index, num_processes=2)
    assert sorted(os.listdir(folder)) == ["generation.json", "images", "manifest.000-of-002.jsonl", "manifest.001-of-002.jsonl"]
    first = [json.loads(line)["id"] for line in Path(folder, "manifest.000-of-002.jsonl").read_text().splitlines()]
    assert first == [0, 2, 4, 6]
    assert [r["id"] for r in gen.read_manifest(folder)] == list(range(7))
    # resuming single-process reads both shards and has nothing left to do
    assert gen.generate_to_folder(tiny_pipe, rows(7), folder, num_inference_steps=2, progress=False, process_index=0, num_processes=1) == 0


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    import veil.evaluation.sampling as sampling
    from veil.evaluation.generate import generate_to_folder
    from veil.models import build_tiny_pipeline

    real = sampling.generate
    def slow(*args, **kwargs):  # slow enough that the kill lands mid-run
        time.sleep(0.4)
        return real(*args, **kwargs)
    sampling.generate = slow
    rows = [{"id": i, "prompt": f"a shape number {i}", "seed": i} for i in range(16)]
    generate_to_folder(build_tiny_pipeline(), rows, sys.argv[1], num_inference_steps=2, batch_size=2, progress=False,
                       process_index=0, num_processes=1)
""")


def test_kill_9_during_generation_then_rerun_completes_exactly(tmp_path, tiny_pipe):
    folder = tmp_path / "gen"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    process = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(folder)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = folder / "manifest.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if manifest.exists() and manifest.read_text().count("\n") >= 2:  # the first batch is in
            break
        time.sleep(0.02)
    assert process.poll() is None, process.stderr.read().decode()[-2000:]
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    done_before = len(gen.read_manifest(str(folder)))
    assert 2 <= done_before < 16

    made = gen.generate_to_folder(tiny_pipe, rows(16), str(folder), num_inference_steps=2, batch_size=2, progress=False,
                                  process_index=0, num_processes=1)
    assert made == 16 - done_before
    ids = [json.loads(line)["id"] for line in manifest.read_text().splitlines()]
    assert sorted(ids) == list(range(16))  # no row twice, none missing
    assert sorted(os.listdir(folder / "images")) == [f"{i:06d}.png" for i in range(16)]  # no stray temporary files


def _at_once(work, threads):
    """Run ``work`` in ``threads`` threads at once; the exceptions they raised."""
    import threading

    errors = []

    def run():
        try:
            work()
        except Exception as error:  # noqa: BLE001 - any failure is what the callers test for
            errors.append(error)

    started = [threading.Thread(target=run) for _ in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()
    return errors


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_two_generations_into_one_folder_keep_their_own_temporaries(tmp_path, tiny_pipe):
    """Temporary image names are each writer's own: saving one row from many threads at once never finds its temporary
    gone, and a run removes only the temporaries of writers that have ended, not those of one still running."""
    from PIL import Image

    folder = tmp_path / "gen"
    (folder / "images").mkdir(parents=True)
    image = Image.new("RGB", (8, 8), "red")

    def save_many():
        for _ in range(40):
            gen._save_image(image, str(folder / "images" / "000000.png"))

    assert not _at_once(save_many, 4) and os.listdir(folder / "images") == ["000000.png"]

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        running = folder / "images" / f"000001.png.tmp-{sleeper.pid}-beef"  # another evaluation, mid-write
        killed = folder / "images" / f"000002.png.tmp-{_dead_pid()}-dead"  # left by a killed one
        running.write_bytes(b"half")
        killed.write_bytes(b"half")
        gen.generate_to_folder(tiny_pipe, rows(3), str(folder), num_inference_steps=2, batch_size=3, progress=False,
                               process_index=0, num_processes=1)
        assert running.exists() and not killed.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_run_ids_do_not_collide_under_concurrent_inserts(tmp_path, monkeypatch):
    from veil.evaluation import runs

    results = {"task": {"name": "shapes_concepts", "version": 1}, "base_model": {"name": "tiny"}, "config": {},
               "metrics": {"original": {"concept_rate": {"rates": {"circle": 0.5}}}}}
    path = str(tmp_path / "runs.sqlite")
    ids = []

    def insert_many():
        for _ in range(30):
            ids.append(runs.record_run(results, str(tmp_path), path=path))

    assert not _at_once(insert_many, 6) and len(set(ids)) == len(ids) == 180
    assert len(runs.list_runs(limit=1000, path=path)) == 180

    # An id already taken (two runs in one second drawing alike) is drawn again, not an IntegrityError.
    taken = iter([ids[0], ids[0], "20990101-000000-fresh"])
    monkeypatch.setattr(runs, "new_run_id", lambda now: next(taken))
    assert runs.record_run(results, str(tmp_path), path=path) == "20990101-000000-fresh"


# ---------------------------------------------------------------------------------------- veil eval, runs, compare
EVAL = ("--model", "tiny", "--num-inference-steps", "2", "--limit", "6", "--seeds", "0")


def test_eval_shapes_tasks_with_and_without_an_artifact_then_runs_and_compare(tmp_path, capsys, stand_in_shapes):
    pipe = veil.load_pipeline("tiny")
    artifact = save_esd_artifact(pipe, tmp_path / "erased")
    code, out, err = run_cli(capsys, "eval", "--task", "shapes_concepts", *EVAL, "--out", tmp_path / "plain")
    assert code == 0, err
    assert "circle" in out and "results in" in out
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    assert plain["config"]["variants"] == ["original"] and (plain["task"]["name"], plain["task"]["version"]) == ("shapes_concepts", 1)
    assert {"veil", "torch", "diffusers"} <= set(plain["versions"]) and "git_revision" in plain
    assert plain["metrics"]["original"]["concept_rate"]["counts"]["circle"] == 6

    code, out, err = run_cli(capsys, "eval", "--task", "shapes_paraphrase", *EVAL, "--out", tmp_path / "para-plain")
    assert code == 0, err
    code, out, err = run_cli(capsys, "eval", "--task", "shapes_paraphrase", *EVAL, "--artifact", artifact, "--out", tmp_path / "para")
    assert code == 0, err
    para = json.loads((tmp_path / "para" / "results.json").read_text())
    assert para["config"]["variants"] == ["original", "erased"] and para["artifact"]["method"] == "esd"
    assert para["config"]["targets"] == ["circle"] and "target_rate" in para["metrics"]["erased"]["concept_rate"]
    csv_lines = (tmp_path / "para" / "images.csv").read_text().splitlines()
    assert csv_lines[0].startswith("variant,id,prompt,seed") and len(csv_lines) == 1 + 2 * para["images"]["original"]

    code, out, err = run_cli(capsys, "eval", "--task", "shapes_concepts", *EVAL, "--out", tmp_path / "plain")
    assert_one_sentence_error(code, err, "already holds results")

    code, out, _ = run_cli(capsys, "runs")
    assert code == 0 and out.count("shapes_paraphrase") == 2 and str(tmp_path / "para") in out
    code, out, _ = run_cli(capsys, "compare", "1", tmp_path / "para")
    assert code == 0 and "original/concept_rate.accuracy" in out and "B - A" in out
    code, _, err = run_cli(capsys, "compare", "1", "99")
    assert_one_sentence_error(code, err, "No run '99'")


def test_eval_keeps_the_old_flags_and_a_custom_prompt_csv(tmp_path, capsys, stand_in_shapes):
    prompts = tmp_path / "mine.csv"
    prompts.write_text("prompt,seed,shape,colour,background\na red circle,3,circle,red,\na thing,4,,,\n")
    code, out, err = run_cli(capsys, "eval", "--task", "shapes_concepts", "--prompts", prompts, "--model", "tiny", "--device", "cpu",
                             "--num-inference-steps", "2", "--guidance-scale", "3.0", "--out", tmp_path / "r", "--overwrite")
    assert code == 0, err
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["config"]["guidance_scale"] == 3.0 and results["images"] == {"original": 2}
    assert results["metrics"]["original"]["concept_rate"]["counts"] == {"circle": 1, "red": 1}


def test_eval_unlocked_with_a_kpop_key(tmp_path, capsys, stand_in_shapes):
    pipe = veil.load_pipeline("tiny")
    method = veil.get_method("kpop")(concepts=["circle"], max_train_steps=1, ddim_steps=4, samples_per_trajectory=2)
    veil.fit(method, pipe, progress=False)
    artifact = veil.Artifact.from_method(method, pipe)
    method.detach(pipe)
    artifact.save(str(tmp_path / "hidden"))
    veil.save_key(method.key, tmp_path / "circle.veilkey", artifact=artifact)
    code, out, err = run_cli(capsys, "eval", "--task", "shapes_concepts", *EVAL, "--artifact", tmp_path / "hidden",
                             "--key", tmp_path / "circle.veilkey", "--out", tmp_path / "r")
    assert code == 0, err
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["config"]["variants"] == ["original", "erased", "unlocked"] and results["config"]["unlocked"] is True
    assert "veilkey" not in (tmp_path / "r" / "results.json").read_text().replace(str(tmp_path), "")  # the key stays out
    assert results["config"]["key_routing"] == "routed"  # the key holder's model: the key only on prompts about circle
    # Images drawn with the routed key are not taken for the unrouted key's.
    code, _, err = run_cli(capsys, "eval", "--task", "shapes_concepts", *EVAL, "--artifact", tmp_path / "hidden",
                           "--key", tmp_path / "circle.veilkey", "--key-routing", "unrouted", "--out", tmp_path / "r", "--rescore")
    assert code == 2 and "Traceback" not in err  # after the original and erased rows' progress bars, one sentence:
    assert_one_sentence_error(code, err.strip().splitlines()[-1], "key_routing 'routed'")


def test_artists_task_scores_clip_and_lpips_on_targets_and_nontargets(tmp_path, tiny_pipe):
    from veil.evaluation.metrics.lpips import LPIPS

    from .test_metrics import StandInNet

    artifact = veil.load_artifact(save_esd_artifact(tiny_pipe, tmp_path / "erased", concept="Picasso"))
    results = evaluate("artists", str(tmp_path / "r"), pipe=tiny_pipe, artifact=artifact, prompts=shared_prompts("big_artist_prompts.csv"),
                       limit=30, num_inference_steps=2, progress=False,
                       scorers={"clip": lambda images, prompts: [20.0 + len(p) % 7 for p in prompts], "lpips": LPIPS(StandInNet(), (4, 8))})
    erased = results["metrics"]["erased"]
    assert erased["lpips"]["target_lpips"] >= 0 and "lpips_difference" in erased["lpips"]
    assert "lpips" not in results["metrics"]["original"]  # the original is the reference
    assert erased["clip_score"]["target_clip_score"] is not None and erased["clip_score"]["nontarget_clip_score"] is not None
