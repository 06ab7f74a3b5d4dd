"""The publish stage: what goes where and its verification (`publish`), the HTTP and git transports
(`http`, `git`), and the local read-only mirror server (`mirror`)."""
