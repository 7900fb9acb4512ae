"""Bad inputs across every ``veil`` command, each run as a new user would run it, and what became of each.

Every case runs ``veil`` in a process of its own from its own empty folder (with ``--model tiny``),
after laying out the files it needs there (a file to be used as a parent folder, an artifact whose
manifest is a JSON list, a corrupt ``bench.json``, ...). By default each case's process is forked
from one that has already imported veil and torch (so that a case costs a fraction of a second, not a
fresh interpreter's start); ``--fresh`` starts ``python -m veil.cli.main`` for every case instead, and
the first case of every command always runs fresh, so that what is printed while importing (library
notices) is seen too. Each outcome is one of:

* ``refused``: exit status 2, a one-sentence error, no traceback, nothing new written;
* ``warned``: accepted with a warning, where a warning is the right answer (a truncated concept);
* ``refused, wrote files``: refused, but files or folders were left behind;
* ``traceback``: a Python traceback;
* ``silent accept``: exit status 0 without a refusal or warning;
* ``data lost``: a file or folder laid out before the run was changed or removed;
* ``other exit``: any other exit status (a crash, a timeout).

Writes ``results.json`` (every case: command, exit status, outcome, message, seconds) and ``table.md``
(counts per command and outcome, then every case that was not refused) to ``--out``.

    python bench/bad_inputs.py --out bench/results/reliability/bad-inputs
    python bench/bad_inputs.py --only generate --out /tmp/bad   # the cases whose name holds 'generate'
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

TINY = ["--model", "tiny"]
HUGE = "1180591620717411303424"
LONG_CONCEPT = "circle " * 1430  # 10,010 characters
OUTCOMES = ("refused", "warned", "refused, wrote files", "traceback", "silent accept", "data lost", "other exit")


class Case:
    """One bad input: ``argv`` after ``veil``, the files laid out first, extra environment, what is acceptable."""

    def __init__(self, command, name, argv, files=None, env=None, ok=("refused",)):
        self.command, self.name, self.argv = command, f"{command}: {name}", list(argv)
        self.files, self.env, self.ok = dict(files or {}), dict(env or {}), tuple(ok)


# Laid-out files: text or bytes is a file's content, DIR an empty folder, ("fixture", name) a copy of a fixture.
DIR = object()
KEEP = "keep me\n"


def fixture(name):
    return ("fixture", name)


def output_cases(command, argv, kind, overwrite_dir_case=True):
    """The path cases of one output flag: ``argv`` holds ``{out}`` where the output path goes; ``kind`` is
    ``folder`` or ``file``."""
    def fill(out):
        return [a.replace("{out}", out) for a in argv]

    cases = [
        Case(command, f"{kind} under a file", fill("afile.txt/sub"), {"afile.txt": KEEP}),
        Case(command, f"{kind} in /proc", fill("/proc/veil_bad_input")),
        Case(command, f"{kind} is an existing file", fill("existing.txt"), {"existing.txt": KEEP}),
        Case(command, f"{kind} under a missing parent in /proc", fill("/proc/nope/x")),
    ]
    if kind == "folder":
        cases.append(Case(command, "folder exists with files", fill("existing"), {"existing/keep.txt": KEEP}))
    else:
        cases.append(Case(command, "file is an existing folder", fill("adir"), {"adir/keep.txt": KEEP}))
        if overwrite_dir_case:
            cases.append(Case(command, "file is an existing folder, --overwrite", fill("adir") + ["--overwrite"],
                              {"adir/keep.txt": KEEP}))
    return cases


def artifact_cases(command, argv, which=("missing", "file", "list", "corrupt", "no-sha", "truncated", "version", "method")):
    """Broken ``--artifact`` folders; ``argv`` holds ``{artifact}``."""
    def fill(path):
        return [a.replace("{artifact}", path) for a in argv]

    layouts = {
        "missing": ("missing folder", "nothere", {}),
        "file": ("a file, not a folder", "afile.txt", {"afile.txt": KEEP}),
        "list": ("veil.json is a JSON list", "art", {"art": fixture("uce"), "art/veil.json": "[1, 2, 3]\n"}),
        "corrupt": ("veil.json is not JSON", "art", {"art": fixture("uce"), "art/veil.json": "{not json"}),
        "no-sha": ("manifest without weights_sha256", "art", {"art": fixture("uce-nosha")}),
        "truncated": ("weights truncated", "art", {"art": fixture("uce-truncated")}),
        "version": ("format version 99", "art", {"art": fixture("uce-v99")}),
        "method": ("unknown method", "art", {"art": fixture("uce-bogus-method")}),
    }
    return [Case(command, f"--artifact {layouts[w][0]}", fill(layouts[w][1]), layouts[w][2]) for w in which]


def with_flag(argv, flag, value):
    """``argv`` with the value after ``flag`` replaced."""
    at = argv.index(flag) + 1
    return argv[:at] + [value] + argv[at + 1:]


def build_cases():
    cases = []
    erase = ["erase", "--method", "esd", *TINY, "--concept", "circle", "--steps", "1"]
    hide = ["hide", *TINY, "--concept", "circle", "--steps", "1"]
    generate = ["generate", *TINY, "--prompt", "x", "--seeds", "0", "--num-inference-steps", "1"]
    evaluate = ["eval", *TINY, "--limit", "1", "--seeds", "0", "--num-inference-steps", "1"]
    attack = ["attack", "--attack", "prompt_search", *TINY, "--concept", "circle", "--steps", "1", "--num-images", "1",
              "--seeds", "0", "--num-inference-steps", "1"]
    bench = ["bench", *TINY, "--methods", "uce", "--concepts", "circle", "--seeds", "0", "--num-inference-steps", "1"]
    demo = ["demo", *TINY, "--steps", "1"]

    # Output paths, each checked before any long work.
    cases += output_cases("erase", erase + ["--out", "{out}"], "folder")
    cases += output_cases("hide", hide + ["--out", "{out}", "--key-out", "k.veilkey"], "folder")
    cases += output_cases("hide", hide + ["--out", "pub", "--key-out", "{out}"], "file", overwrite_dir_case=False)
    cases += output_cases("generate", generate + ["--out", "{out}"], "file")
    cases += output_cases("eval", evaluate + ["--out", "{out}"], "folder")
    cases += output_cases("export", ["export", "--artifact", "art", *TINY, "--out", "{out}"], "folder")
    cases += output_cases("export", ["export", "--artifact", "art", "--format", "unet-state-dict", *TINY, "--out", "{out}"], "file")
    cases += output_cases("attack", attack + ["--out", "{out}"], "folder")
    cases += output_cases("bench", bench + ["--out", "{out}"], "file")[:4]  # bench writes into an existing folder by design
    cases += output_cases("report", ["report", "run", "--out", "{out}"], "file")
    cases += output_cases("demo", demo + ["--out", "{out}"], "folder")
    for case in cases:
        if case.command == "export" or "--artifact" in case.argv:
            case.files.setdefault("art", fixture("uce"))
        if case.command == "report":
            case.files.setdefault("run", fixture("evalrun"))
    cases.append(Case("hide", "--key-out an existing key", hide + ["--out", "pub", "--key-out", "old.veilkey"],
                      {"old.veilkey": KEEP}))
    cases.append(Case("hide", "--key-out inside --out", hide + ["--out", "pub", "--key-out", "pub/k.veilkey"]))
    cases.append(Case("report", "--out an empty folder", ["report", "run", "--out", "emptydir"],
                      {"run": fixture("evalrun"), "emptydir": DIR}))
    cases.append(Case("report", "--screenshot in /proc", ["report", "run", "--out", "r.html", "--screenshot", "/proc/r.png"],
                      {"run": fixture("evalrun")}))
    for name, db, files in (("in /proc", "/proc/x/r.sqlite", {}), ("under a file", "afile.txt/r.sqlite", {"afile.txt": KEEP}),
                            ("a folder", "adir", {"adir/keep.txt": KEEP}), ("not a database", "junk.sqlite", {"junk.sqlite": KEEP * 100})):
        cases.append(Case("runs", f"VEIL_RUNS_DB {name}", ["runs"], files, env={"VEIL_RUNS_DB": db}))
        cases.append(Case("eval", f"VEIL_RUNS_DB {name}", evaluate + ["--out", "v"], files, env={"VEIL_RUNS_DB": db}))
    cases.append(Case("compare", "VEIL_RUNS_DB in /proc", ["compare", "1", "2"], env={"VEIL_RUNS_DB": "/proc/x/r.sqlite"}))

    # Devices.
    for command, argv in (("erase", erase + ["--out", "o"]), ("hide", hide + ["--out", "o", "--key-out", "k.veilkey"]),
                          ("generate", generate + ["--out", "g.png"]), ("eval", evaluate + ["--out", "v"]),
                          ("attack", attack + ["--out", "o"]), ("bench", bench + ["--out", "b"]),
                          ("export", ["export", "--artifact", "art", *TINY, "--out", "o"]), ("demo", demo + ["--out", "o"])):
        files = {"art": fixture("uce")} if command == "export" else {}
        cases.append(Case(command, "--device cuda without CUDA", argv + ["--device", "cuda"], files))
        cases.append(Case(command, "--device bogus", argv + ["--device", "bogus"], files))

    # Numbers.
    for command, argv in (("erase", erase + ["--out", "o"]), ("hide", hide + ["--out", "o", "--key-out", "k.veilkey"])):
        cases.append(Case(command, "--set seed=1e400", argv + ["--set", "seed=1e400"]))
        cases.append(Case(command, "--lr nan", argv + ["--lr", "nan"]))
        cases.append(Case(command, "--lr inf", argv + ["--lr", "inf"]))
        cases.append(Case(command, "--lr -1", argv + ["--lr", "-1"]))
        cases.append(Case(command, "--steps 0", with_flag(argv, "--steps", "0")))
        cases.append(Case(command, "--steps -3", with_flag(argv, "--steps", "-3")))
        cases.append(Case(command, "--seed huge", argv + ["--seed", HUGE]))
        cases.append(Case(command, "--set learning_rate=nan", argv + ["--set", "learning_rate=nan"]))
        cases.append(Case(command, "--checkpoint-every 0", argv + ["--checkpoint-every", "0"]))
        cases.append(Case(command, "--set ddim_steps=abc", argv + ["--set", "ddim_steps=abc"]))
    cases.append(Case("attack", "--lr nan", attack + ["--out", "o", "--lr", "nan"]))
    cases.append(Case("attack", "--steps 0", with_flag(attack, "--steps", "0") + ["--out", "o"]))
    cases.append(Case("attack", "--num-images 0", attack + ["--out", "o", "--num-images", "0"]))
    for command, argv in (("generate", generate + ["--out", "g.png"]), ("eval", evaluate + ["--out", "v"]),
                          ("attack", attack + ["--out", "o"]), ("bench", bench + ["--out", "b"])):
        cases.append(Case(command, "--seeds huge", argv + ["--seeds", HUGE]))
        cases.append(Case(command, "--seeds abc", argv + ["--seeds", "abc"]))
        cases.append(Case(command, "--guidance-scale nan", argv + ["--guidance-scale", "nan"]))
        cases.append(Case(command, "--guidance-scale inf", argv + ["--guidance-scale", "inf"]))
        cases.append(Case(command, "--num-inference-steps 0", argv + ["--num-inference-steps", "0"]))
    cases.append(Case("generate", "--seeds -1", generate + ["--out", "g.png", "--seeds", "-1"]))
    cases.append(Case("eval", "--limit -1", evaluate + ["--out", "v", "--limit", "-1"]))
    cases.append(Case("eval", "--limit 0", evaluate + ["--out", "v", "--limit", "0"]))
    cases.append(Case("eval", "--batch-size 0", evaluate + ["--out", "v", "--batch-size", "0"]))
    cases.append(Case("runs", "--limit -1", ["runs", "--limit", "-1"]))
    cases.append(Case("runs", "--limit 0", ["runs", "--limit", "0"]))

    # Concepts.
    uce = ["erase", "--method", "uce", *TINY, "--out", "o"]
    cases.append(Case("erase", "10,000-character concept", uce + ["--concept", LONG_CONCEPT], ok=("refused", "warned")))
    cases.append(Case("hide", "10,000-character concept", ["hide", *TINY, "--steps", "1", "--out", "o", "--key-out", "k.veilkey",
                                                           "--concept", LONG_CONCEPT], ok=("refused", "warned")))
    cases.append(Case("erase", "newline in a concept", uce + ["--concept", "cir\ncle"]))
    cases.append(Case("erase", "control character in a concept", uce + ["--concept", "cir\x07cle"]))
    cases.append(Case("erase", "tab in a concept", uce + ["--concept", "cir\tcle"]))
    cases.append(Case("hide", "newline in a concept", ["hide", *TINY, "--steps", "1", "--out", "o", "--key-out", "k.veilkey",
                                                       "--concept", "a\nb"]))
    cases.append(Case("erase", "empty concept", uce + ["--concept", ""]))
    cases.append(Case("erase", "blank concept", uce + ["--concept", "   "]))
    cases.append(Case("attack", "newline in the concept", ["attack", "--attack", "prompt_search", *TINY, "--concept", "a\nb",
                                                          "--steps", "1", "--num-images", "1", "--seeds", "0", "--out", "o"]))
    cases.append(Case("attack", "concept the artifact does not hide", attack[:5] + ["--concept", "square"] + attack[7:]
                      + ["--artifact", "art", "--out", "o"], {"art": fixture("uce")}))
    cases.append(Case("demo", "--concept hexagon", demo + ["--out", "o", "--concept", "hexagon"]))
    cases.append(Case("demo", "--method bogus", demo + ["--out", "o", "--method", "bogus"]))
    cases.append(Case("demo", "--steps -1", ["demo", *TINY, "--steps", "-1", "--out", "o"]))
    cases.append(Case("erase", "--method bogus", ["erase", "--method", "bogus", *TINY, "--concept", "circle", "--out", "o"]))

    # Artifacts and keys.
    cases += artifact_cases("generate", generate + ["--out", "g.png", "--artifact", "{artifact}"])
    cases += artifact_cases("eval", evaluate + ["--out", "v", "--artifact", "{artifact}"], ("file", "list", "no-sha", "truncated"))
    cases += artifact_cases("export", ["export", "--artifact", "{artifact}", *TINY, "--out", "o"], ("file", "list", "no-sha", "truncated"))
    cases += artifact_cases("attack", attack + ["--out", "o", "--artifact", "{artifact}"], ("file", "list", "no-sha", "truncated"))
    kpop = {"kp": fixture("kpop"), "kp.veilkey": fixture("kpop.veilkey")}
    cases.append(Case("generate", "--key missing", generate + ["--out", "g.png", "--artifact", "kp", "--key", "nokey.veilkey"], kpop))
    cases.append(Case("generate", "--key not a key file", generate + ["--out", "g.png", "--artifact", "kp", "--key", "junk.veilkey"],
                      {**kpop, "junk.veilkey": KEEP}))
    cases.append(Case("generate", "--key without --artifact", generate + ["--out", "g.png", "--key", "kp.veilkey"], kpop))
    cases.append(Case("generate", "--key of an artifact without keys", generate + ["--out", "g.png", "--artifact", "art",
                                                                               "--key", "kp.veilkey"], {**kpop, "art": fixture("uce")}))
    cases.append(Case("generate", "--passphrase-file missing", generate + ["--out", "g.png", "--artifact", "kp", "--key", "kp.veilkey",
                                                                        "--passphrase-file", "nope.txt"], kpop))
    cases.append(Case("eval", "--key a folder", evaluate + ["--out", "v", "--artifact", "kp", "--key", "kp"], kpop))
    cases.append(Case("hide", "--passphrase-file missing", hide + ["--out", "o", "--key-out", "k.veilkey", "--passphrase-file", "nope.txt"]))
    cases.append(Case("hide", "--passphrase-file empty", hide + ["--out", "o", "--key-out", "k.veilkey", "--passphrase-file", "empty.txt"],
                      {"empty.txt": ""}))

    # Config files.
    for command, argv in (("erase", erase + ["--out", "o"]), ("hide", hide + ["--out", "o", "--key-out", "k.veilkey"])):
        cases.append(Case(command, "--config missing", argv + ["--config", "nope.yaml"]))
        cases.append(Case(command, "--config a JSON list", argv + ["--config", "list.json"], {"list.json": "[1, 2]\n"}))
        cases.append(Case(command, "--config binary", argv + ["--config", "bin.yaml"], {"bin.yaml": bytes(range(256)) * 4}))
        cases.append(Case(command, "--config unknown field", argv + ["--config", "c.yaml"], {"c.yaml": "bogus_field: 1\n"}))
        cases.append(Case(command, "--config a folder", argv + ["--config", "adir"], {"adir/keep.txt": KEEP}))

    # Evaluation inputs.
    v = evaluate + ["--out", "v"]
    cases.append(Case("eval", "--prompts a binary file", v + ["--prompts", "p.csv"], {"p.csv": bytes(range(256)) * 8}))
    cases.append(Case("eval", "--prompts missing", v + ["--prompts", "nope.csv"]))
    cases.append(Case("eval", "--prompts empty", v + ["--prompts", "p.csv"], {"p.csv": ""}))
    cases.append(Case("eval", "--prompts a folder", v + ["--prompts", "adir"], {"adir/keep.txt": KEEP}))
    cases.append(Case("eval", "--task bogus", v + ["--task", "bogus"]))
    cases.append(Case("eval", "--task a YAML list", v + ["--task", "t.yaml"], {"t.yaml": "- 1\n- 2\n"}))
    cases.append(Case("eval", "--task a binary file", v + ["--task", "t.yaml"], {"t.yaml": bytes(range(256)) * 4}))
    cases.append(Case("eval", "--targets hexagon", v + ["--targets", "hexagon"]))
    cases.append(Case("eval", "--variants bogus", v + ["--variants", "bogus"]))
    cases.append(Case("eval", "--variants erased without --artifact", v + ["--variants", "erased"]))
    cases.append(Case("eval", "--scorer without =", v + ["--scorer", "classifier"]))
    cases.append(Case("eval", "--scorer unknown name", v + ["--scorer", "bogus=x"]))
    cases.append(Case("eval", "--reference missing", v + ["--reference", "nope"]))
    cases.append(Case("eval", "--out an earlier evaluation", evaluate + ["--out", "run"], {"run": fixture("evalrun")}))
    cases.append(Case("eval", "--rescore a folder that is no evaluation", v[:-1] + ["existing", "--rescore"],
                      {"existing/keep.txt": KEEP}))

    # Reports and comparisons.
    results_list = {"run/results.json": "[1, 2]\n"}
    results_bad = {"run/results.json": "{not json"}
    cases.append(Case("report", "corrupt results.json", ["report", "run", "--out", "r.html"], results_bad))
    cases.append(Case("report", "results.json is a list", ["report", "run", "--out", "r.html"], results_list))
    cases.append(Case("report", "results.json lacks fields", ["report", "run", "--out", "r.html"], {"run/results.json": "{}\n"}))
    cases.append(Case("report", "empty folder", ["report", "run", "--out", "r.html"], {"run": DIR}))
    cases.append(Case("report", "missing folder", ["report", "nope", "--out", "r.html"]))
    cases.append(Case("report", "corrupt bench.json", ["report", "b", "--out", "r.html"], {"b/bench.json": "{not json"}))
    cases.append(Case("report", "bench.json is a list", ["report", "b", "--out", "r.html"], {"b/bench.json": "[]\n"}))
    cases.append(Case("compare", "corrupt results.json", ["compare", "run", "run2"],
                      {**results_bad, "run2": fixture("evalrun")}))
    cases.append(Case("compare", "results.json is a list", ["compare", "run", "run2"], {**results_list, "run2": fixture("evalrun")}))
    cases.append(Case("compare", "results.json lacks fields", ["compare", "run", "run2"],
                      {"run/results.json": "{}\n", "run2": fixture("evalrun")}))
    cases.append(Case("compare", "unknown run", ["compare", "999999", "888888"]))
    cases.append(Case("compare", "a file, not a run", ["compare", "afile.txt", "afile.txt"], {"afile.txt": KEEP}))

    # Bench settings.
    b = bench + ["--out", "b"]
    cases.append(Case("bench", "--methods ''", ["bench", *TINY, "--methods", "", "--concepts", "circle", "--out", "b"]))
    cases.append(Case("bench", "--methods ','", ["bench", *TINY, "--methods", ",", "--concepts", "circle", "--out", "b"]))
    cases.append(Case("bench", "--methods bogus", ["bench", *TINY, "--methods", "bogus", "--concepts", "circle", "--out", "b"]))
    cases.append(Case("bench", "--concepts ''", ["bench", *TINY, "--methods", "uce", "--concepts", "", "--out", "b"]))
    cases.append(Case("bench", "--concepts hexagon", ["bench", *TINY, "--methods", "uce", "--concepts", "hexagon", "--out", "b"]))
    cases.append(Case("bench", "--set uce.bogus=1", b + ["--set", "uce.bogus=1"]))
    cases.append(Case("bench", "--set esd.learning_rate=nan", b + ["--set", "esd.learning_rate=nan"]))
    cases.append(Case("bench", "--set uce.seed=1e400", b + ["--set", "uce.seed=1e400"]))
    cases.append(Case("bench", "--set bogus.x=1", b + ["--set", "bogus.x=1"]))
    cases.append(Case("bench", "--set without a method", b + ["--set", "x=1"]))
    cases.append(Case("bench", "--attacks bogus", b + ["--attacks", "bogus"]))
    cases.append(Case("bench", "--attack-set prompt_search.bogus=1", b + ["--attacks", "prompt_search",
                                                                        "--attack-set", "prompt_search.bogus=1"]))
    cases.append(Case("bench", "--forging-eval-steps abc", b + ["--forging-eval-steps", "abc"]))
    cases.append(Case("bench", "--resume on a corrupt bench.json", b + ["--resume"], {"b/bench.json": "{not json"}))
    cases.append(Case("bench", "--resume on a list bench.json", b + ["--resume"], {"b/bench.json": "[]\n"}))
    cases.append(Case("bench", "--resume with --overwrite", b + ["--resume", "--overwrite"]))
    cases.append(Case("bench", "earlier bench without --resume", b, {"b/bench.json": "{}\n"}))

    # Unknown names.
    cases.append(Case("attack", "--attack bogus", ["attack", "--attack", "bogus", *TINY, "--concept", "circle", "--out", "o"]))
    cases.append(Case("attack", "--images missing folder", attack + ["--out", "o", "--images", "nope"]))
    cases.append(Case("attack", "--images an empty folder", attack + ["--out", "o", "--images", "adir"], {"adir": DIR}))
    cases.append(Case("attack", "--set bogus=1", attack + ["--out", "o", "--set", "bogus=1"]))
    cases.append(Case("attack", "--eval-steps without key_forging", attack + ["--out", "o", "--eval-steps", "1"]))
    cases.append(Case("ls", "unknown listing", ["ls", "bogus"]))
    cases.append(Case("erase", "--model missing folder", ["erase", "--method", "uce", "--model", "nope", "--concept", "circle", "--out", "o"]))
    cases.append(Case("generate", "--model a file", ["generate", "--model", "afile.txt", "--prompt", "x", "--out", "g.png"],
                      {"afile.txt": KEEP}))
    cases.append(Case("generate", "empty --prompt", generate[:3] + ["--prompt", " "] + generate[5:] + ["--out", "g.png"]))
    return cases


# -------------------------------------------------------------------------------------------------
def make_fixtures(folder):
    """A UCE artifact (and broken copies), a KPOP artifact with its key and an evaluation folder, made once."""
    def run(*argv):
        code, _, stderr = run_forked(argv, folder, _env(folder), timeout=1800)
        if code != 0:
            raise SystemExit(f"making a fixture failed: veil {' '.join(argv)}\n{stderr[-2000:]}")

    os.makedirs(folder, exist_ok=True)
    run("erase", "--method", "uce", *TINY, "--concept", "circle", "--out", "uce")
    run("hide", *TINY, "--concept", "circle", "--steps", "2", "--out", "kpop", "--key-out", "kpop.veilkey")
    run("eval", *TINY, "--limit", "2", "--seeds", "0", "--num-inference-steps", "1", "--out", "evalrun")
    manifest = json.load(open(os.path.join(folder, "uce", "veil.json")))
    for name, change in (("uce-nosha", lambda m: m.pop("weights_sha256")), ("uce-v99", lambda m: m.update(format_version=99)),
                         ("uce-bogus-method", lambda m: m.update(method="bogus")), ("uce-truncated", None)):
        shutil.copytree(os.path.join(folder, "uce"), os.path.join(folder, name))
        if change is None:
            weights = os.path.join(folder, name, "model.safetensors")
            with open(weights, "r+b") as handle:
                handle.truncate(os.path.getsize(weights) // 2)
            continue
        edited = dict(manifest)
        change(edited)
        with open(os.path.join(folder, name, "veil.json"), "w") as handle:
            json.dump(edited, handle, indent=2)


def _env(folder, extra=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               VEIL_RUNS_DB=os.path.join(folder, "runs.sqlite"))
    env.update(extra or {})
    return env


def lay_out(case, folder, fixtures):
    for relative, content in case.files.items():
        path = os.path.join(folder, relative)
        if isinstance(content, tuple):
            source = os.path.join(fixtures, content[1])
            if os.path.isdir(source):
                shutil.copytree(source, path, dirs_exist_ok=True)
            else:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                shutil.copy(source, path)
        elif content is DIR:
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as handle:
                handle.write(content if isinstance(content, bytes) else content.encode())


def snapshot(folder):
    """``{relative path: sha256 or 'dir'}`` of everything under ``folder``."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            found[os.path.relpath(os.path.join(root, name), folder)] = "dir"
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, folder)] = hashlib.sha256(handle.read()).hexdigest()
    return found


def classify(returncode, output, lost, new):
    if "Traceback (most recent call last)" in output:
        return "traceback"
    if lost:
        return "data lost"
    if returncode == 2:
        return "refused, wrote files" if new else "refused"
    if returncode == 0:
        return "warned" if re.search(r"\bwarning\b", output, re.IGNORECASE) else "silent accept"
    return "other exit"


def run_fresh(argv, cwd, env, timeout):
    """``veil argv`` in a new interpreter: ``(exit status or 'timeout', stdout, stderr)``."""
    try:
        done = subprocess.run([sys.executable, "-m", "veil.cli.main", *argv], cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, env=env, errors="replace")
        return done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as expired:
        return "timeout", str(expired.stdout or ""), str(expired.stderr or "")


def preload():
    """Import what the commands import, once, in the process the cases are forked from."""
    import veil  # noqa: F401  (first: it quiets library notices the others would print)
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel  # noqa: F401
    from transformers import BertModel  # noqa: F401

    import veil.attacks  # noqa: F401
    import veil.bench  # noqa: F401
    import veil.cli.main  # noqa: F401
    import veil.evaluation.harness  # noqa: F401
    import veil.evaluation.report  # noqa: F401
    import veil.shapes.classifier  # noqa: F401


def run_forked(argv, cwd, env, timeout):
    """``veil argv`` in a process forked from this one (veil already imported): as :func:`run_fresh`."""
    with tempfile.TemporaryDirectory() as logs:
        out_path, err_path = os.path.join(logs, "out"), os.path.join(logs, "err")
        pid = os.fork()
        if pid == 0:  # the case's own process: its folder, environment and output files, then veil's main
            code = 1
            try:
                os.chdir(cwd)
                os.environ.clear()
                os.environ.update(env)
                for fd, path in ((1, out_path), (2, err_path)):
                    os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
                from veil.cli.main import main

                code = main(list(argv))
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 1
            except BaseException:  # noqa: BLE001 - reported as the interpreter would report it
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code if isinstance(code, int) else 0)
        deadline = time.monotonic() + timeout
        status = None
        while status is None:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(raw)
            elif time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                status = "timeout"
            else:
                time.sleep(0.02)

        def read(path):
            with open(path, errors="replace") as handle:
                return handle.read()

        return status, read(out_path), read(err_path)


def run_case(case, root, fixtures, fresh, timeout):
    folder = tempfile.mkdtemp(prefix="case-", dir=root)
    lay_out(case, folder, fixtures)
    before = snapshot(folder)
    start = time.perf_counter()
    returncode, stdout, stderr = (run_fresh if fresh else run_forked)(case.argv, folder, _env(fixtures, case.env), timeout)
    seconds = time.perf_counter() - start
    after = snapshot(folder)
    lost = sorted(p for p, digest in before.items() if after.get(p) != digest)
    new = sorted(p for p in after if p not in before and not any(p.startswith(q + os.sep) for q in after if q not in before and q != p))
    outcome = classify(returncode, stdout + stderr, lost, new)
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(("usage:", "  ", "               "))]
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "case": case.name, "command": case.command, "argv": [_short(a) for a in case.argv], "env": case.env, "fresh": fresh,
        "exit_status": returncode, "outcome": outcome, "acceptable": outcome in case.ok,
        "message": _short(lines[-1]) if lines else _short(stdout.strip().splitlines()[-1] if stdout.strip() else ""),
        "stderr_lines": len(lines), "lost": lost, "new": new, "seconds": round(seconds, 2),
    }


def _short(text, limit=300):
    text = str(text)
    return text if len(text) <= limit else f"{text[:60]}... ({len(text)} characters)"


def write_table(records, path):
    commands = sorted({r["command"] for r in records})
    lines = ["| command | cases | " + " | ".join(OUTCOMES) + " |", "|---|---:|" + "---:|" * len(OUTCOMES)]
    for command in commands + ["all"]:
        mine = [r for r in records if command in ("all", r["command"])]
        counts = [sum(r["outcome"] == o for r in mine) for o in OUTCOMES]
        name = f"**{command}**" if command == "all" else command
        lines.append(f"| {name} | {len(mine)} | " + " | ".join(map(str, counts)) + " |")
    lines += ["", "Every case that was not refused in one sentence:", ""]
    lines += ["| case | outcome | exit | message |", "|---|---|---:|---|"]
    for r in records:
        if r["outcome"] != "refused":
            message = r["message"].replace("|", "\\|")
            lines.append(f"| {r['case']!s} | {r['outcome']} | {r['exit_status']} | {message} |")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="Folder for results.json and table.md.")
    parser.add_argument("--only", help="Run only the cases whose name holds this text.")
    parser.add_argument("--timeout", type=float, default=180, help="Seconds a case may run.")
    parser.add_argument("--list", action="store_true", help="List the cases and stop.")
    parser.add_argument("--fresh", action="store_true", help="Start a new interpreter for every case (slow: each imports torch).")
    args = parser.parse_args()
    cases = [c for c in build_cases() if not args.only or args.only in c.name]
    if args.list:
        for case in cases:
            print(case.name)
        print(f"{len(cases)} cases")
        return
    root = tempfile.mkdtemp(prefix="veil-bad-inputs-")
    fixtures = os.path.join(root, "fixtures")
    start = time.perf_counter()
    preload()
    make_fixtures(fixtures)
    records, commands_seen = [], set()
    for number, case in enumerate(cases, 1):
        fresh = args.fresh or case.command not in commands_seen
        commands_seen.add(case.command)
        record = run_case(case, root, fixtures, fresh, args.timeout)
        records.append(record)
        print(f"[{number}/{len(cases)}] {record['outcome']:<20} {record['seconds']:6.1f} s  {case.name}", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    counts = {o: sum(r["outcome"] == o for r in records) for o in OUTCOMES}
    os.makedirs(args.out, exist_ok=True)
    summary = {"cases": len(records), "fresh_interpreter": sum(r["fresh"] for r in records), "outcomes": counts,
               "not_acceptable": sum(not r["acceptable"] for r in records),
               "seconds": round(time.perf_counter() - start, 1), "python": sys.version.split()[0]}
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump({"summary": summary, "cases": records}, handle, indent=2)
        handle.write("\n")
    write_table(records, os.path.join(args.out, "table.md"))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
