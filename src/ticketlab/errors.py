"""The one exception type for mistakes a user can make (bad config, missing data, wrong shapes)."""


class TicketlabError(Exception):
    """A user-facing error: its message says what went wrong and what to do.

    The CLI prints it without a traceback and exits with status 2.
    """
