"""daphne's HTTP requests, without Twisted's parse of POST bodies.

Under daphne, Twisted's `Request.requestReceived` parses every multipart or
URL-encoded POST body into `request.args` before daphne hands the body to the ASGI
application, which parses it again; daphne never reads `args`. For a multipart
upload that parse (the standard library's email parser over the whole body) held
about eight copies of the body at once (a 150 MB upload took daphne from 116 MB
to 1.4 GB), and a multipart body whose boundary it cannot parse was answered with
an empty 400 before Django saw it. Twisted's Request takes
`parsePOSTFormSubmission=False` to skip it ("This can use large amounts of memory
for large uploads"); daphne builds its requests without arguments, so `install`
gives it a request class that passes it.
"""

from daphne import http_protocol


class WebRequest(http_protocol.WebRequest):
    """daphne's request, leaving the body unparsed for the ASGI application."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(*args, **kwargs)


def install() -> None:
    """Make daphne build its HTTP requests with `WebRequest` (at the next
    connection: `HTTPFactory.buildProtocol` reads the module's name each time)."""
    http_protocol.WebRequest = WebRequest
