"""The built-in commands: each one's help line, and where its arguments are declared.

``taskhook --help`` lists commands by name and help line; only the command being run (or
every one, for ``completion``) needs its arguments, and so its module, imported. This table is
what lets the parser list the rest without importing them (see `main.build_parser`). Imports
nothing of ours.
"""

from __future__ import annotations

# name: (help line, "module:function" declaring its sub-parser as `function(subparsers, common)`)
BUILTIN: dict[str, tuple[str, str]] = {
    "serve": ("run the receiver", "receiver.cli.serve:add_serve"),
    "migrate": ("apply schema migrations and exit", "receiver.cli.serve:add_migrate"),
    "deliveries": ("the stored deliveries (the inbox)", "receiver.cli.deliveries:add_deliveries"),
    "export": ("stored deliveries as JSON Lines (replay format)",
               "receiver.cli.deliveries:add_export"),
    "reconcile": ("poll a vendor API (TaskMonk, Clarifai, or Refonte when callbacks stopped)",
                  "receiver.cli.reconcile:add_parser"),
    "prune": ("apply [retention] now: old duplicate receipts, bodies of old finished deliveries",
              "receiver.cli.prune:add_parser"),
    "trigger": ("send one realistic, signed delivery of an event to a receiver",
                "receiver.cli.trigger:configure"),
    "completion": ("print a shell completion script (bash, zsh or fish)",
                   "receiver.cli.completion:add_parser"),
    "sign": ("print the headers a source expects for a body (for curl -H @file)",
             "receiver.cli.simulate:add_sign"),
    "replay": ("recorded deliveries through the pipeline (or --to a receiver)",
               "receiver.cli.replay:add_replay"),
    "simulate": ("play a vendor: realistic signed task lifecycles to a receiver",
                 "receiver.cli.simulate:add_simulate"),
    "rebuild": ("rebuild the ledger from stored deliveries (or backfill one handler)",
                "receiver.cli.replay:add_rebuild"),
}  # fmt: skip


def help_of(name: str) -> str:
    return BUILTIN[name][0]
