"""``taskhook completion bash|zsh|fish``: a completion script made from the parser itself.

The script lists every command (plugins' too, when the config loads) and each command's
options, so it never drifts from what the parser accepts. Install it once:

    taskhook completion bash > ~/.local/share/bash-completion/completions/taskhook
    taskhook completion zsh > "${fpath[1]}/_taskhook"
    taskhook completion fish > ~/.config/fish/completions/taskhook.fish
"""

from __future__ import annotations

import argparse
from typing import Any

from receiver.cli.commands import help_of

SHELLS = ("bash", "zsh", "fish")


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    # Run by `main` itself: the script is made from the parser `main` built.
    complete = sub.add_parser("completion", help=help_of("completion"), parents=[common])
    complete.add_argument("shell", choices=SHELLS)


def commands(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Each command and its options (long names), from the parser."""
    found: dict[str, list[str]] = {}
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            choices: dict[str, Any] = action.choices
            for name, sub in choices.items():
                found[name] = sorted(
                    option for a in sub._actions for option in a.option_strings
                    if option.startswith("--")
                )  # fmt: skip
    return found


def globals_of(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(o for a in parser._actions for o in a.option_strings if o.startswith("--"))


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    table = commands(parser)
    top = " ".join([*table, *globals_of(parser)])
    if shell == "bash":
        cases = "\n".join(
            f'        {name}) opts="{" ".join(opts)}" ;;' for name, opts in table.items()
        )
        return f"""# taskhook completion for bash
_taskhook() {{
    local cur cmd word opts=""
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    for word in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        case "$word" in -*) ;; *) cmd="$word"; break ;; esac
    done
    case "$cmd" in
{cases}
        *) opts="{top}" ;;
    esac
    COMPREPLY=($(compgen -W "$opts {" ".join(globals_of(parser))}" -- "$cur"))
}}
complete -o default -F _taskhook taskhook
"""
    if shell == "zsh":
        lines = "\n".join(f"    {name}) opts=({' '.join(opts)}) ;;" for name, opts in table.items())
        return f"""#compdef taskhook
# taskhook completion for zsh
_taskhook() {{
  local -a opts
  if (( CURRENT == 2 )); then
    compadd -- {top}
    return
  fi
  case $words[2] in
{lines}
  esac
  compadd -- $opts {" ".join(globals_of(parser))}
}}
compdef _taskhook taskhook
"""
    out = ["# taskhook completion for fish", "complete -c taskhook -f"]
    for name in table:
        out.append(f"complete -c taskhook -n __fish_use_subcommand -a {name}")
    for name, opts in table.items():
        for option in opts:
            out.append(
                f"complete -c taskhook -n '__fish_seen_subcommand_from {name}' -l {option[2:]}"
            )
    for option in globals_of(parser):
        out.append(f"complete -c taskhook -l {option[2:]}")
    return "\n".join(out) + "\n"
