"""``fetalhc merge``: combine the folders of ``fetalhc explain --shard`` or ``fetalhc evaluate
--shard`` runs into exactly what one unsharded run writes.

The checks (shards of one run by their ``shard.json`` and ``provenance.json``; an output
folder that is new, empty, or a merged folder of the same provenance unless ``--overwrite``)
and the merge are :func:`fetalhc.report.merge.merge_shards` (its module docstring says what
is merged and how); this module parses the arguments and prints the outcome.
"""

from __future__ import annotations

from pathlib import Path

import click

from fetalhc.cli.options import Command

# TensorFlow-free copy of fetalhc.report.merge.KINDS for --help (checked equal by
# tests/test_cli_options_explain.py)
KINDS = ("explain", "evaluate")


def merge_command(shard_dirs, out, kind: str | None = None, overwrite: bool = False) -> dict:
    """Library side of ``fetalhc merge`` (:func:`fetalhc.report.merge.merge_shards`)."""
    from fetalhc.report.merge import merge_shards

    return merge_shards(shard_dirs, out, kind=kind, overwrite=overwrite)


@click.command("merge", cls=Command)
@click.argument("shard_dirs", nargs=-1, required=True,
                type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the merged results (as one unsharded run writes them).")
@click.option("--kind", type=click.Choice(KINDS), default=None,
              help="explain or evaluate (default: read from the shards' shard.json).")
@click.option("--overwrite", is_flag=True,
              help="Delete an earlier merged folder at --out first (a non-empty --out made by "
                   "something else is refused without it).")
def command(shard_dirs, out, kind, overwrite):
    """Merge the shard folders of `fetalhc explain/evaluate --shard i/n` into one.

    The shards must share their provenance.json but for the shard; the merged folder gets
    the provenance of an unsharded run."""
    result = merge_command(shard_dirs, out, kind=kind, overwrite=overwrite)
    click.echo(f"merged {result['shards']} {result['kind']} shards ({result['images']} "
               f"images) into {out}")
