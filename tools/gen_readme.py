"""Regenerate the provider list in README.md from providers_table.py.

    python tools/gen_readme.py          # rewrite README.md
    python tools/gen_readme.py --check  # exit 1 if README.md is stale
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pi_min  # noqa: E402
import providers_table  # noqa: E402

START, END = "<!-- providers:start -->", "<!-- providers:end -->"


def table() -> str:
    aliases = {}
    for alias, pid in providers_table.ALIASES.items():
        aliases.setdefault(pid, []).append(alias)
    lines = ["| provider | aliases | API family | key env vars | auth | default model |",
             "|---|---|---|---|---|---|"]
    for pid in sorted(providers_table.PROVIDERS):
        row = providers_table.PROVIDERS[pid]
        api = row["api"]
        if row.get("modelApis"):  # one family per model (Copilot)
            per_model = dict.fromkeys([row["api"]] + [rule[1] for rule in row["modelApis"]])
            api = ", ".join(per_model) + " (per model)"
        if row["api"] not in pi_min._FAMILIES or not pi_min._auth_built(row["auth"]):
            api += " *(planned)*"
        env = ", ".join(f"`{k}`" for k in row["envKeys"]) or "-"
        alias = ", ".join(f"`{a}`" for a in sorted(aliases.get(pid, ()))) or "-"
        lines.append(f"| `{pid}` | {alias} | {api} | {env} | {row['auth']} | `{row['defaultModel']}` |")
    return "\n".join(lines)


def render(readme: str) -> str:
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main() -> int:
    path = ROOT / "README.md"
    old = path.read_text(encoding="utf-8")
    new = render(old)
    if "--check" in sys.argv:
        if new != old:
            print("README.md provider list is stale: run python tools/gen_readme.py")
            return 1
        return 0
    path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
