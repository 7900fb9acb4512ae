"""Does another artifact's trained key unlock this one? Each KPOP artifact of --artifacts (its key file beside it as
``<artifact>.veilkey``, or named by --keys) is unlocked with every artifact's key,
relabelled as the artifact's own concept, and the share of its concept's canonical images labelled as the
concept is recorded; the diagonal is the artifact's own key. The bench's wrong-key row is one cell of this table.

    python bench/kpop_cross_keys.py --artifacts A/artifacts/kpop-circle B/artifacts/kpop-circle \\
        A/artifacts/kpop-square B/artifacts/kpop-square --seeds 0,1 --out cross-keys.json
"""

import os

import veil
from _common import ShapesProbe, shapes_parser
from veil._io import write_json
from veil.evaluation.shapes_tasks import rows_naming
from veil.methods.kpop.keys import Key, read_key


def main():
    parser = shapes_parser(__doc__)
    parser.add_argument("--artifacts", nargs="+", required=True, help="KPOP artifact folders, each hiding one concept.")
    parser.add_argument("--keys", nargs="*", default=None, help="Their key files, in the same order (default: <artifact>.veilkey).")
    args = parser.parse_args()
    keys = args.keys or [os.path.normpath(a) + ".veilkey" for a in args.artifacts]
    if len(keys) != len(args.artifacts):
        parser.error("Give one key file per artifact (or none, for the ones beside them).")
    probe = ShapesProbe(args)
    loaded = []
    for folder, key_file in zip(args.artifacts, keys):
        artifact = veil.Artifact.load(folder)
        concepts = artifact.manifest["concepts"]
        if len(concepts) != 1:
            parser.error(f"{folder} hides {len(concepts)} concepts; give artifacts that hide one each.")
        loaded.append((folder, artifact, concepts[0], read_key(key_file)))
    table = {}
    for folder, artifact, concept, _ in loaded:
        rows = rows_naming(probe.canonical, concept)
        method = artifact.attach(probe.pipe)
        try:
            cells = {"public": probe.rates(rows).get(concept)}
            for other_folder, _, other_concept, key in loaded:
                with method.unlocked(probe.pipe, Key({concept: key[other_concept]})):
                    cells[f"{other_folder} ({other_concept})"] = probe.rates(rows).get(concept)
                print(f"{folder} ({concept}) with {other_folder}'s {other_concept} key: "
                      f"{100 * cells[f'{other_folder} ({other_concept})']:.1f} %", flush=True)
        finally:
            artifact.detach(probe.pipe)
        table[f"{folder} ({concept})"] = cells
    write_json(args.out, probe.record(
        what="each artifact's concept rate on its canonical prompts, public and unlocked with each artifact's key "
             "(relabelled as its own concept); the diagonal is its own key", rates=table))


if __name__ == "__main__":
    main()
