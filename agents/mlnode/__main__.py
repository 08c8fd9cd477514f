"""`python -m agents.mlnode --model models/ref-tiny --port 8000 [--served-name NAME]`."""

import argparse

from agents.mlnode.api import main

parser = argparse.ArgumentParser(description="Nullius model node (CPU engine)")
parser.add_argument("--model", required=True, help="model folder, e.g. models/ref-tiny")
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=8000)
parser.add_argument("--served-name", default=None,
                    help="name to serve under instead of the manifest's (a cheater's disguise)")
parser.add_argument("--threads", type=int, default=None, help="torch threads")
args = parser.parse_args()
main(args.model, args.host, args.port, args.served_name, args.threads)
