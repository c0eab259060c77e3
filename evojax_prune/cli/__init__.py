"""The command line: argparse glue and progress lines."""
