"""The streaming session-feature job as a standalone entry point (e.g. `spark-submit streaming/job.py --data s3://...`).

A thin shell: parse the options (the same as `propensity stream`), build the settings, call the library.
The job itself lives in `propensity.streaming` (nbs/17_streaming.ipynb)."""
import argparse
import sys

from propensity.config import Settings
from propensity.streaming import add_stream_args, cmd_stream


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="streaming/job.py", description=__doc__.splitlines()[0])
    add_stream_args(p)
    args = p.parse_args(argv)
    from propensity.cli import UsageError
    try:
        return cmd_stream(args, Settings.from_env())
    except UsageError as e:
        print(f"streaming/job.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
