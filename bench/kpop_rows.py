"""One line per row of KPOP bench files: public / synonyms / paraphrases, keys, the lowest other concept, seconds.

    python bench/kpop_rows.py bench/results/kpop/preset/seed-1 [...]
"""
import json
import sys
from pathlib import Path


def describe(row):
    shares = row["nontarget_shares"]
    low = min(shares, key=shares.get)
    pct = lambda v: "—" if v is None else f"{100 * v:.1f}%"
    return (f"{row['concept']}: public {pct(row['target_rate'])}, synonyms {pct(row['synonym_rate'])}, "
            f"paraphrases {pct(row['paraphrase_rate'])}, short {pct(row.get('short_rate'))}, lowest other {low} "
            f"{pct(shares[low])}, key {pct(row.get('target_rate_with_key'))}, random key "
            f"{pct(row.get('target_rate_random_key'))}, {row.get('wrong_key_from', 'other')}'s key "
            f"{pct(row.get('target_rate_wrong_key'))}, {row['seconds']:.0f} s")


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        for row in json.loads((Path(folder) / "bench.json").read_text())["rows"]:
            print(f"{Path(folder).name} {describe(row)}")
