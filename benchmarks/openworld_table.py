"""Markdown tables of ``openworld_heads.py`` results (one or more of its JSON files).

python benchmarks/openworld_table.py heads-a.json heads-b.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openworld_common import NEGATIVE_SOURCES, wilson


def share(k: int, n: int) -> str:
    low, high = wilson(k, n)
    return f"{100 * k / n:.1f} ({100 * low:.0f}-{100 * high:.0f})"


def loso_cell(result: dict, source: str, target: str) -> str:
    entry = result["loso"].get(source)
    if entry is None:
        return "–"
    n = entry["called"]["n"]
    return share(round(entry["called"][target] * n), n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path, nargs="+")
    args = parser.parse_args()
    results: dict = {}
    for path in args.results:
        results |= json.loads(path.read_text())
    for target in ("0.9", "0.95"):
        print(
            f"\nScreening threshold for {float(target):.0%} MSLD mpox sensitivity on validation\n"
        )
        heads = ["variant", "MSLD AUC (95% CI)", "MSLD mpox sens. %", "MSLD others called %"]
        heads += [f"LOSO {s} called %" for s in NEGATIVE_SOURCES]
        heads += ["LOSO skin-id Healthy %"]
        print("| " + " | ".join(heads) + " |")
        print("|" + "---|" * len(heads))
        for name, res in results.items():
            m = res["msld"]
            low, high = m["auc_ci"]
            row = [
                f"`{name}`",
                f"{m['auc']:.3f} ({low:.3f}-{high:.3f})",
                share(*m[f"sens@{target}"]),
                share(*m[f"others_called@{target}"]),
            ]
            row += [loso_cell(res, s, target) for s in NEGATIVE_SOURCES]
            healthy = res["loso"].get("skin-id-smartphone", {}).get("per_class", {}).get("Healthy")
            row.append(f"{100 * healthy[f'called@{target}']:.1f}" if healthy else "–")
            print("| " + " | ".join(row) + " |")
    print("\nNo-lesion head (LOSO: share of each held-out source's photos it calls 'no lesion')\n")
    print("| variant | healthy-abdomen | skin-id Healthy | skin-id lesions | sd198 | bites |")
    print("|---|---|---|---|---|---|")
    for name, res in results.items():
        loso = res["loso"]
        if "no_lesion" not in next(iter(loso["healthy-abdomen"]["per_class"].values())):
            continue
        skin = loso["skin-id-smartphone"]["per_class"]
        lesion_n = sum(c["n"] for k, c in skin.items() if k != "Healthy")
        lesion = sum(c["no_lesion"] * c["n"] for k, c in skin.items() if k != "Healthy")

        def mean(source: str, loso: dict = loso) -> float:
            classes = loso[source]["per_class"].values()
            return sum(c["no_lesion"] * c["n"] for c in classes) / sum(c["n"] for c in classes)

        print(
            f"| `{name}` | {100 * mean('healthy-abdomen'):.1f} | "
            f"{100 * skin['Healthy']['no_lesion']:.1f} | {100 * lesion / lesion_n:.1f} | "
            f"{100 * mean('sd198-subset'):.1f} | {100 * mean('insect-bites'):.1f} |"
        )
    print("\nStyle probes (held-out MSLD mpox photos, fold thresholds for 95% sensitivity)\n")
    first = next(iter(results.values()))["msld"]["probes"]
    print("| variant | none | " + " | ".join(first) + " |")
    print("|---|---|" + "---|" * len(first))
    for name, res in results.items():
        m = res["msld"]
        base = m["sens@0.95"]
        cells = [f"{base[0]}/{base[1]}"]
        for probe in first:
            k, n = m["probes"][probe]["sens@0.95"]
            cells.append(f"{k}/{n} (AUC {m['probes'][probe]['auc']:.3f})")
        print(f"| `{name}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
