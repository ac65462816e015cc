"""Errors a person sees: each names what is wrong and where."""


class UserError(Exception):
    """A problem with the user's input or environment (bad config, port in use, ...).

    The CLI prints it as one line and exits 2, without a traceback.
    """
