"""Running it: the attach use case, the daemon, its config file, metrics."""
