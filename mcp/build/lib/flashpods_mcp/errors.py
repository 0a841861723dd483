"""The one error type the laptop side raises: a sentence that says what to change."""


class FlashpodsError(Exception):
    """A failure explained in one sentence an agent or a human can act on.

    The MCP server turns it into a tool error, the CLI prints it and exits 1.
    The message never contains the API token.
    """
