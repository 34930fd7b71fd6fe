"""``convrl data``: look at conversation sources before a pipeline run uses them.

    convrl data inspect dailydialog:../shared/data/dailydialog/convlab3_unified/data.zip
    convrl data inspect jsonl:chats.jsonl csv:turns.csv?role=speaker --max-conversations 500
    convrl data inspect goemotions:../shared/data/goemotions/ekman --json > card.json
    convrl data ingest jsonl:chats.jsonl --out tables/      turns/personas/quarantine .parquet + data_card.json

``inspect`` ingests the specs exactly as the pipeline would (same cleaning,
redaction, deduplication and split) but never fails on the quarantine
threshold: it prints the data card (counts per source, split, role, emotion,
act and persona; feedback; a turn-length histogram; PII counts; skipped
records, warnings and the quarantine by reason category) and, with
``--quarantine-out``, saves the quarantine table. ``ingest`` writes the
quarantine table whenever it has one, also when it then fails (nothing
usable, or over ``--quarantine-threshold``), so what was wrong can be seen.
Empty inputs are a warning, not an error. Wired into ``convrl`` by
:func:`add_commands`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _ingest(args, threshold: float):
    from convrl.data.ingest import IngestError, ingest

    try:
        result = ingest(args.specs, seed=args.seed, max_conversations=args.max_conversations,
                        max_turn_chars=args.max_turn_chars, max_turn_tokens=args.max_turn_tokens,
                        quarantine_threshold=threshold, near_duplicate_threshold=args.near_duplicate_threshold,
                        allow_empty=True)
    except IngestError as exc:
        _warn(getattr(exc, "result", None))
        raise
    _warn(result)
    return result


def _warn(result) -> None:
    for w in (result.stats.get("warnings") or []) if result is not None else []:
        print(f"convrl data: warning: {w}", file=sys.stderr)


def _save_quarantine(result, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    result.quarantine.to_parquet(path, index=False)


def cmd_inspect(args) -> int:
    from convrl.data.card import build_card, render_card
    from convrl.data.ingest import IngestError

    status = 0
    try:
        result = _ingest(args, threshold=1.0)
    except IngestError as exc:
        result = getattr(exc, "result", None)
        print(f"convrl data: error: {exc}", file=sys.stderr)
        if result is None:
            return 2
        status = 2  # nothing usable: still show the card, whose quarantine section says why
    card = build_card(result)
    if args.quarantine_out and len(result.quarantine):
        _save_quarantine(result, Path(args.quarantine_out))
    if args.json:
        print(json.dumps(card, indent=2, default=str))
    else:
        print(render_card(card), end="")
        if len(result.quarantine):
            where = args.quarantine_out or "--quarantine-out PATH to save them"
            print(f"\n{len(result.quarantine):,} quarantined rows ({result.stats['quarantined_fraction']:.1%}); "
                  f"the pipeline fails above data.quarantine_threshold. Rows: {where}")
    return status


def cmd_ingest(args) -> int:
    from convrl.data.card import build_card
    from convrl.data.ingest import IngestError

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        result = _ingest(args, threshold=args.quarantine_threshold)
    except IngestError as exc:
        partial = getattr(exc, "result", None)
        if partial is not None:
            _save_quarantine(partial, out / "quarantine.parquet")
            (out / "data_card.json").write_text(json.dumps(build_card(partial), indent=2, default=str))
            print(f"convrl data: quarantine table written to {out / 'quarantine.parquet'} "
                  f"({_categories(partial)})", file=sys.stderr)
        print(f"convrl data: error: {exc}", file=sys.stderr)
        return 2
    result.turns.to_parquet(out / "turns.parquet", index=False)
    result.personas.to_parquet(out / "personas.parquet", index=False)
    result.quarantine.to_parquet(out / "quarantine.parquet", index=False)
    (out / "data_card.json").write_text(json.dumps(build_card(result), indent=2, default=str))
    print(f"{result.stats['conversations']:,} conversations, {result.stats['turns']:,} turns, "
          f"{len(result.personas):,} source personas, {len(result.quarantine):,} quarantine rows "
          f"({_categories(result) or 'none'}) -> {out}")
    return 0


def _categories(result) -> str:
    counts = result.stats.get("quarantine_categories") or {}
    return ", ".join(f"{k} {v:,}" for k, v in counts.items())


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("specs", nargs="+", help="source specs, e.g. jsonl:chats.jsonl dailydialog:PATH?cap=500")
    p.add_argument("--max-conversations", type=int, default=0, help="stop after this many (0 = all)")
    p.add_argument("--max-turn-chars", type=int, default=2000)
    p.add_argument("--max-turn-tokens", type=int, default=0, help="token budget per turn (0 = none)")
    p.add_argument("--near-duplicate-threshold", type=float, default=0.85,
                   help="Jaccard of word 3-grams for near-duplicates (0 = off)")
    p.add_argument("--seed", type=int, default=13)


def add_commands(subparsers) -> None:
    data = subparsers.add_parser("data", help="inspect or ingest conversation sources",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = data.add_subparsers(dest="data_cmd", required=True)
    ins = sub.add_parser("inspect", help="print the data card of one or more source specs")
    _common(ins)
    ins.add_argument("--json", action="store_true", help="print the card as JSON")
    ins.add_argument("--quarantine-out", default="", help="save quarantined rows to this Parquet file")
    ins.set_defaults(fn=cmd_inspect)
    ing = sub.add_parser("ingest", help="write turns/personas/quarantine Parquet tables and the data card")
    _common(ing)
    ing.add_argument("--out", required=True, help="output folder")
    ing.add_argument("--quarantine-threshold", type=float, default=0.05)
    ing.set_defaults(fn=cmd_ingest)


def main(argv: list[str] | None = None) -> int:
    """Run without the main CLI: ``python -m convrl.data_cli inspect SPEC``."""
    parser = argparse.ArgumentParser(prog="convrl")
    add_commands(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(["data", *(argv if argv is not None else sys.argv[1:])])
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
