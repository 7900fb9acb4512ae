"""`veil` commands on the true-size random-weight models, end to end, each timed with its peak memory.

    python bench/sd_cli.py --out bench/results/sd-scale/cli            # every run below, one after another
    python bench/sd_cli.py --runs sd21-generate --out ...             # some of them

Each run is the command a user types, in a process of its own: its wall and CPU seconds and its peak resident
memory (the child's ``ru_maxrss``) are recorded with the command's last line of output, and the files it wrote
are checked (an artifact's manifest and weights, a key file, the images), with their sizes in bytes. One JSON file per run, ``<run>.json``.
"""

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time

from sd_scale import first_to_go

TRAINING = ["--steps", "2", "--resolution", "512", "--mixed-precision", "bf16", "--gradient-checkpointing",
            "--set", "ddim_steps=4"]
RUNS = {
    "sdxl-erase-esd": (["erase", "--method", "esd", "--model", "sdxl-random", "--concept", "a cat", *TRAINING,
                        "--out", "{tmp}/esd"], ["esd/veil.json", "esd/model.safetensors"]),
    "sdxl-hide-kpop": (["hide", "--model", "sdxl-random", "--concept", "a cat", *TRAINING, "--out", "{tmp}/kpop",
                        "--key-out", "{tmp}/cat.veilkey"], ["kpop/veil.json", "kpop/model.safetensors", "cat.veilkey"]),
    "sd21-generate": (["generate", "--model", "sd21-random", "--prompt", "a cat", "--seeds", "0",
                       "--num-inference-steps", "4", "--out", "{tmp}/images"], ["images", "images-images"]),
}


def _size(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)
    return os.path.getsize(path) if os.path.exists(path) else None


def run(name, tmp):
    arguments, outputs = RUNS[name]
    arguments = [a.format(tmp=tmp) for a in arguments]
    command = [sys.executable, "-m", "veil.cli.main", *arguments]
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, preexec_fn=first_to_go)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        out.seek(0)
        text = out.read().decode(errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    written = {path: _size(os.path.join(tmp, path)) for path in outputs}  # bytes; None: not written
    return {
        "run": name, "command": "veil " + shlex.join(arguments).replace(tmp, "OUT"),
        "returncode": os.waitstatus_to_exitcode(status), "seconds": round(seconds, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1), "peak_mem_mb": round(usage.ru_maxrss / 1024, 1),
        "outputs_written": written, "last_line": lines[-1] if lines else "",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs, OMP_NUM_THREADS="
                   f"{os.environ.get('OMP_NUM_THREADS', 'unset')}",
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/sd-scale/cli")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"Runs to make: {', '.join(RUNS)}.")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    failed = 0
    for name in [n for n in args.runs.split(",") if n]:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(name, tmp)
        with open(os.path.join(args.out, f"{name}.json"), "w") as handle:
            json.dump(result, handle, indent=2)
        print(json.dumps(result), flush=True)
        failed += result["returncode"] != 0 or None in result["outputs_written"].values()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
