#!/usr/bin/env python3
"""Writes a bash completion script for a lifeline binary from its own --help texts, so it
lists exactly the subcommands and options the binary has. Usage: completions.py BINARY NAME"""

import subprocess
import sys


def help_of(binary, words):
    out = subprocess.run([binary, *words, "--help"], capture_output=True, text=True, check=True)
    section, options, commands = "", [], []
    for line in out.stdout.splitlines():
        if not line.startswith(" "):
            section = line.rstrip(":")
            continue
        if not line.startswith("  ") or line.startswith("   "):
            continue
        first = line.split()[0].rstrip(",")
        if section == "Options" and first.startswith("--"):
            options.append(first)
        elif section == "Commands":
            commands.append(first)
    return options, commands


def walk(binary, words, table):
    options, commands = help_of(binary, words)
    table[" ".join(words)] = options + commands
    for c in commands:
        if c != "help":
            walk(binary, words + [c], table)


def main():
    binary, name = sys.argv[1], sys.argv[2]
    table = {}
    walk(binary, [], table)
    func = "_" + name.replace("-", "_")
    print(f"# bash completion for {name}, generated from its --help by scripts/completions.py")
    print(f"{func}() {{")
    print('    local cur=${COMP_WORDS[COMP_CWORD]} path="" w i')
    print("    for ((i = 1; i < COMP_CWORD; i++)); do")
    print("        w=${COMP_WORDS[i]}")
    print('        [[ $w == -* ]] && continue')
    print('        case "${path:+$path }$w" in')
    for key in sorted(table):
        if key:
            print(f'        "{key}") path="{key}" ;;')
    print("        esac")
    print("    done")
    print('    case "$path" in')
    for key, words in sorted(table.items()):
        print(f'    "{key}") COMPREPLY=($(compgen -W "{" ".join(words)}" -- "$cur")) ;;')
    print("    esac")
    print("    # Option values are files more often than not.")
    print('    [[ ${#COMPREPLY[@]} -eq 0 && $cur != -* ]] && COMPREPLY=($(compgen -f -- "$cur"))')
    print("}")
    print(f"complete -F {func} {name}")


main()
