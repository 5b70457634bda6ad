"""zaptrix-admin: the operator's one CLI. Each command group is a module with `register(subparsers)`."""
