"""Generate or score with an ExecuTorch bundle (model.pte) through the ExecuTorch Python runtime.

    python runtimes/executorch_generate.py --bundle DIR --prompt TEXT [sampling flags]
    python runtimes/executorch_generate.py --bundle DIR --score FILE... [--json]

Same flags, stdout convention, stats and --score as the ONNX runner (runtimes/runner_cli.py): stdout carries
exactly the generated text; the stats line goes to stderr; with --json the stats (or the score) are a JSON
object on stdout's last line. KV paging flags need a --kv io bundle. ExecuTorch's Python runtime loads torch.
"""

from __future__ import annotations

import sys

from omnicoder.runtimes.runner_cli import build_parser as build_runner_parser
from omnicoder.runtimes.runner_cli import paging_policy, retention_policy, run

from omnicoder.cliutil import ArgumentParser
from omnicoder.errors import OmniCoderError, cli_main


def build_parser() -> ArgumentParser:
    return build_runner_parser(
        "omnicoder-executorch-generate",
        __doc__,
        "executorch",
        threads_help="ExecuTorch (XNNPACK) threadpool size (0: the runtime's default)",
    )


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def make_backend(bundle):
        from omnicoder.runtimes.executorch_session import create_backend, executorch_section

        if getattr(args, "speculative", 0) and executorch_section(bundle)["kv_mode"] == "buffer":
            raise OmniCoderError(
                "--speculative needs a --kv io bundle (its program returns the MTP heads' logits and its KV cache "
                "can roll back); re-export with --kv io"
            )
        return create_backend(bundle, args.threads, paging_policy(args, bundle), retention_policy(args, bundle))

    return run(args, make_backend)


if __name__ == "__main__":
    sys.exit(main())
