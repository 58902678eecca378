#!/usr/bin/env python3
"""carbon-kube lab: `cdk synth` / `cdk deploy`, or offline without the CDK CLI:

    python app.py [-c key=value ...]        # writes the templates to cdk.out/

Run directly, it reads cdk.json's context itself; under the CLI the CLI passes it.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

from carbon_kube_lab import ConfigError, build_app, load_cdk_json_context  # noqa: E402


def _parse_args(argv: list[str]) -> dict[str, str]:
    overrides: dict[str, str] = {}
    args = iter(argv)
    for arg in args:
        if arg in ("-c", "--context"):
            arg = next(args, "")
        elif arg.startswith("--context="):
            arg = arg.split("=", 1)[1]
        elif arg in ("-h", "--help"):
            print(__doc__.strip())
            sys.exit(0)
        else:
            sys.exit(f"unknown argument {arg!r} (use -c key=value)")
        key, sep, value = arg.partition("=")
        if not sep or not key:
            sys.exit(f"-c needs key=value, got {arg!r}")
        overrides[key] = value
    return overrides


def main(argv: list[str]) -> int:
    under_cli = "CDK_OUTDIR" in os.environ
    context = load_cdk_json_context()
    context.update(_parse_args(argv))
    try:
        app, _ = build_app(context, outdir=None if under_cli else "cdk.out")
        assembly = app.synth()
    except ConfigError as e:
        print(f"carbon-kube lab: {e}", file=sys.stderr)
        return 1
    if not under_cli:
        # The CLI prints these itself; run directly, say them here.
        for stack in assembly.stacks:
            for message in stack.messages:
                print(f"[{message.level}] {stack.stack_name}: {message.entry.data}", file=sys.stderr)
        names = ", ".join(s.stack_name for s in assembly.stacks)
        print(f"synthesized {names} into {assembly.directory}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
