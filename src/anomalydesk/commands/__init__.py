"""One module per `anomalydesk` subcommand: `register(subparsers, parent)` and `run(args)`."""
