"""Generate or score with an ONNX bundle, using only onnxruntime + numpy (no torch).

    python runtimes/onnx_decode_generate.py --bundle DIR --prompt TEXT [sampling flags]
    python runtimes/onnx_decode_generate.py --bundle DIR --score FILE... [--json]

Same flags and stdout convention as `omnicoder-generate`: stdout carries exactly the generated text;
the stats line goes to stderr; with --json the stats (or the score) are a JSON object on stdout's last line.
"""

from __future__ import annotations

import sys

from omnicoder.runtimes.runner_cli import build_parser as build_runner_parser
from omnicoder.runtimes.runner_cli import paging_policy, retention_policy, run, score

from omnicoder.cliutil import ArgumentParser
from omnicoder.errors import cli_main

__all__ = ["build_parser", "main", "paging_policy", "score"]


def build_parser() -> ArgumentParser:
    p = build_runner_parser(
        "omnicoder-onnx-generate", __doc__, "onnx", threads_help="onnxruntime intra-op threads (0: all cores)"
    )
    p.add_argument("--provider", default=None, help="execution provider, e.g. CPU, CoreML, NNAPI, XNNPACK")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def make_backend(bundle):
        from omnicoder.runtimes.graph_backend import GraphBackend
        from omnicoder.runtimes.onnx_session import OnnxProgram, create_session

        program = OnnxProgram(create_session(bundle, args.threads, args.provider))
        return GraphBackend(bundle, program, paging_policy(args, bundle), retention_policy(args, bundle))

    return run(args, make_backend)


if __name__ == "__main__":
    sys.exit(main())
