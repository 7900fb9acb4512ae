"""What the shapes-world bench scripts share: their common flags, the model, the prompt rows and rates."""

import argparse
import time

import torch

import veil
from veil.evaluation.concept_rate import evaluate_prompts
from veil.evaluation.shapes_tasks import rows_naming, task_rows
from veil.shapes.classifier import classify


def shapes_parser(doc):
    """An argument parser with --model, --concept, --seeds, --num-inference-steps and --out."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--concept", default="circle")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--num-inference-steps", type=int, default=20)
    parser.add_argument("--out", required=True)
    return parser


def parse_set(items):
    """``--set FIELD=VALUE`` items (values read as YAML, lists allowed) as ``{field: value}``."""
    from veil.cli.common import parse_value

    return {field: parse_value(value) for field, _, value in (item.partition("=") for item in items)}


def parse_named_settings(text):
    """``NAME=FIELD=VALUE[,FIELD=VALUE]`` (``NAME=`` alone: no changes) as ``(name, {field: value})``."""
    from veil.cli.common import parse_value

    name, _, body = text.partition("=")
    settings = {}
    for item in filter(None, body.split(",")):
        field, _, value = item.partition("=")
        settings[field] = parse_value(value)
    return name, settings


class ShapesProbe:
    """The model of ``args`` with the canonical rows, the concept's training-synonym rows and its canonical rows."""

    def __init__(self, args):
        self.args = args
        self.pipe = veil.load_pipeline(args.model)
        self.seeds = tuple(int(s) for s in args.seeds.split(","))
        self.canonical = task_rows("shapes_concepts", self.seeds)
        self.synonyms = rows_naming(task_rows("shapes_synonyms", self.seeds), args.concept)
        self.target_rows = rows_naming(self.canonical, args.concept)

    def rates(self, rows, **settings):
        """``{concept: rate}`` (4 decimals) of ``rows`` drawn by the pipeline as it is now."""
        result = evaluate_prompts(self.pipe, rows, classify, num_inference_steps=self.args.num_inference_steps, **settings)
        return {k: round(v, 4) for k, v in result["rates"].items()}

    def unrelated_rows(self, count=48):
        """Canonical rows that name the concept nowhere (shape, colour or background)."""
        concept = self.args.concept
        return [r for r in self.canonical if concept not in (r["shape"], r["colour"], r["background"])][:count]

    def seconds(self, rows, repeats=2):
        """Best wall time of drawing ``rows`` ``repeats`` times with the pipeline as it is now."""
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            self.rates(rows)
            best = min(best, time.perf_counter() - start)
        return best

    def record(self, **extra):
        """The fields every result file starts with."""
        return {"model": self.args.model, "concept": self.args.concept, "seeds": list(self.seeds),
                "num_inference_steps": self.args.num_inference_steps, "threads": torch.get_num_threads(), **extra}
