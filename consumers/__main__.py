from consumers.signals import defer_sigterm

defer_sigterm()  # first: a SIGTERM during start-up (imports included) stops the worker cleanly

from consumers.cli import main  # noqa: E402

main()
